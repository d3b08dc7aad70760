/* sdl_play: plays a raw S16_LE stereo 48 kHz file through SDL2's audio callback, 2048-frame
 * buffers, no format change allowed (SDL must pass the samples through). SDL2's ALSA driver asks
 * for a buffer of two such periods and starts at the first frame; with 1024-frame periods that is
 * 43 ms of slack, which a loaded 2-core CI machine overruns now and then (a real xrun, the same
 * on any device). Run with
 * SDL_AUDIODRIVER=alsa and AUDIODEV=<ALSA device>. Built and run by tests/compat.rs.
 * Prints `driver NAME` and `frames N`; exits 0 when everything was played.
 *
 * Usage: sdl_play SOUND
 */
#include <SDL2/SDL.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHANNELS 2

static int16_t *snd;
static unsigned long snd_frames, pos;
static SDL_atomic_t done;

static void die(const char *what)
{
	printf("error %s: %s\n", what, SDL_GetError());
	fflush(stdout);
	exit(2);
}

static void callback(void *user, Uint8 *out, int bytes)
{
	unsigned long n = bytes / (2 * CHANNELS), k = n;
	(void)user;
	if (k > snd_frames - pos)
		k = snd_frames - pos;
	memcpy(out, snd + pos * CHANNELS, k * CHANNELS * 2);
	memset(out + k * CHANNELS * 2, 0, (n - k) * CHANNELS * 2);
	pos += k;
	if (pos >= snd_frames)
		SDL_AtomicSet(&done, 1);
}

int main(int argc, char **argv)
{
	SDL_AudioSpec want, have;
	SDL_AudioDeviceID dev;
	FILE *f;
	long len;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc != 2) {
		fprintf(stderr, "usage: sdl_play SOUND\n");
		return 2;
	}
	f = fopen(argv[1], "rb");
	if (!f) {
		printf("error open sound\n");
		return 2;
	}
	fseek(f, 0, SEEK_END);
	len = ftell(f);
	fseek(f, 0, SEEK_SET);
	snd = malloc(len);
	if (!snd || fread(snd, 1, len, f) != (size_t)len) {
		printf("error read sound\n");
		return 2;
	}
	fclose(f);
	snd_frames = len / (2 * CHANNELS);

	if (SDL_Init(SDL_INIT_AUDIO) < 0)
		die("SDL_Init");
	printf("driver %s\n", SDL_GetCurrentAudioDriver());
	SDL_zero(want);
	want.freq = 48000;
	want.format = AUDIO_S16LSB;
	want.channels = CHANNELS;
	want.samples = 2048;
	want.callback = callback;
	dev = SDL_OpenAudioDevice(NULL, 0, &want, &have, 0);
	if (!dev)
		die("SDL_OpenAudioDevice");
	SDL_PauseAudioDevice(dev, 0);
	while (!SDL_AtomicGet(&done))
		SDL_Delay(20);
	/* The last callback's buffer is handed to ALSA after it returns: give it the buffer's time,
	 * plus ALSA's queue (SDL does not drain). */
	SDL_Delay(300);
	SDL_CloseAudioDevice(dev);
	SDL_Quit();
	printf("frames %lu\n", pos);
	return 0;
}
