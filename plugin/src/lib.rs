//! libasound_module_pcm_shmix.so: the ALSA ioplug PCM `type shmix`. Runs inside someone else's
//! program, in whatever thread calls alsa-lib; no threads of its own. RT: transfer/pointer yes.
mod sys;
