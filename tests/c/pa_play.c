/* pa_play: plays a raw S16_LE stereo 48 kHz file through PortAudio's ALSA host API on the ALSA
 * device named DEVICE (found by name among PortAudio's devices), with a blocking stream
 * (Pa_WriteStream) or a callback stream, 1024 frames per buffer. Built and run by
 * tests/compat.rs. Prints `frames N` and exits 0 when everything was played.
 *
 * PortAudio 19.6's ALSA host API stops every stream with snd_pcm_drop (its AlsaStop forces
 * abort: "snd_pcm_drain tends to lock up"), on any device. So, as a PortAudio program must, this
 * one keeps the stream running on silence for its output latency (+ 100 ms) before stopping.
 *
 * Usage: pa_play blocking|callback DEVICE SOUND
 */
#include <portaudio.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RATE 48000
#define CHANNELS 2
#define FRAMES 1024

static int16_t *snd;
static unsigned long snd_frames;
static volatile unsigned long pos; /* advanced by the callback thread */

static void die(const char *what, PaError err)
{
	printf("error %s: %s (%d)\n", what, Pa_GetErrorText(err), err);
	fflush(stdout);
	exit(2);
}

static int callback(const void *in, void *out, unsigned long n, const PaStreamCallbackTimeInfo *ti,
		    PaStreamCallbackFlags flags, void *user)
{
	unsigned long k = n;
	(void)in;
	(void)ti;
	(void)flags;
	(void)user;
	if (k > snd_frames - pos)
		k = snd_frames - pos;
	memcpy(out, snd + pos * CHANNELS, k * CHANNELS * 2);
	memset((int16_t *)out + k * CHANNELS, 0, (n - k) * CHANNELS * 2);
	pos += k;
	return paContinue; /* silence after the sound, until Pa_StopStream */
}

int main(int argc, char **argv)
{
	PaStreamParameters op;
	PaStream *s;
	PaError err;
	FILE *f;
	long len, tail;
	int i, dev = -1, blocking;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc != 4 || (strcmp(argv[1], "blocking") && strcmp(argv[1], "callback"))) {
		fprintf(stderr, "usage: pa_play blocking|callback DEVICE SOUND\n");
		return 2;
	}
	blocking = !strcmp(argv[1], "blocking");
	f = fopen(argv[3], "rb");
	if (!f)
		die("open sound", paInternalError);
	fseek(f, 0, SEEK_END);
	len = ftell(f);
	fseek(f, 0, SEEK_SET);
	snd = malloc(len);
	if (!snd || fread(snd, 1, len, f) != (size_t)len)
		die("read sound", paInternalError);
	fclose(f);
	snd_frames = len / (2 * CHANNELS);

	if ((err = Pa_Initialize()) != paNoError)
		die("Pa_Initialize", err);
	for (i = 0; i < Pa_GetDeviceCount(); i++) {
		const PaDeviceInfo *d = Pa_GetDeviceInfo(i);
		if (d && !strcmp(d->name, argv[2]) && d->maxOutputChannels >= CHANNELS)
			dev = i;
	}
	if (dev < 0) {
		for (i = 0; i < Pa_GetDeviceCount(); i++)
			printf("device %d: %s\n", i, Pa_GetDeviceInfo(i)->name);
		die("no such output device", paInvalidDevice);
	}
	memset(&op, 0, sizeof op);
	op.device = dev;
	op.channelCount = CHANNELS;
	op.sampleFormat = paInt16;
	op.suggestedLatency = Pa_GetDeviceInfo(dev)->defaultHighOutputLatency;
	err = Pa_OpenStream(&s, NULL, &op, RATE, FRAMES, paClipOff | paDitherOff, blocking ? NULL : callback, NULL);
	if (err != paNoError)
		die("Pa_OpenStream", err);
	if ((err = Pa_StartStream(s)) != paNoError)
		die("Pa_StartStream", err);
	tail = (long)((Pa_GetStreamInfo(s)->outputLatency + 0.1) * RATE);
	if (blocking) {
		static int16_t silence[FRAMES * CHANNELS];
		while (pos < snd_frames) {
			unsigned long k = snd_frames - pos < FRAMES ? snd_frames - pos : FRAMES;
			if ((err = Pa_WriteStream(s, snd + pos * CHANNELS, k)) != paNoError)
				die("Pa_WriteStream", err);
			pos += k;
		}
		for (; tail > 0; tail -= FRAMES)
			if ((err = Pa_WriteStream(s, silence, FRAMES)) != paNoError)
				die("Pa_WriteStream (silence)", err);
	} else {
		while (pos < snd_frames)
			Pa_Sleep(20);
		Pa_Sleep(tail * 1000 / RATE);
	}
	if ((err = Pa_StopStream(s)) != paNoError)
		die("Pa_StopStream", err);
	if ((err = Pa_CloseStream(s)) != paNoError)
		die("Pa_CloseStream", err);
	Pa_Terminate();
	printf("frames %lu\n", pos);
	return 0;
}
