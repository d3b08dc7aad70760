//! shmix integration tests: one binary, each module drives real ALSA programs against the virtual card.
