/* openal_play: plays a raw S16_LE stereo 48 kHz file through OpenAL Soft (its ALSA backend,
 * device named by the alsoft.conf that ALSOFT_CONF points at), one static buffer on one source
 * with direct channels (no panning: left to left, right to right). Built and run by
 * tests/compat.rs. Prints `renderer`, `frames N`; exits 0 when the source has played.
 *
 * Usage: openal_play SOUND
 */
#include <AL/al.h>
#include <AL/alc.h>
#include <AL/alext.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void die(const char *what)
{
	printf("error %s\n", what);
	fflush(stdout);
	exit(2);
}

static void sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

int main(int argc, char **argv)
{
	ALCint attrs[] = { ALC_FREQUENCY, 48000, 0 };
	ALCdevice *dev;
	ALCcontext *ctx;
	ALuint buf, src;
	ALint state = AL_PLAYING, freq = 0;
	void *snd;
	FILE *f;
	long len;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc != 2) {
		fprintf(stderr, "usage: openal_play SOUND\n");
		return 2;
	}
	f = fopen(argv[1], "rb");
	if (!f)
		die("open sound");
	fseek(f, 0, SEEK_END);
	len = ftell(f);
	fseek(f, 0, SEEK_SET);
	snd = malloc(len);
	if (!snd || fread(snd, 1, len, f) != (size_t)len)
		die("read sound");
	fclose(f);

	dev = alcOpenDevice(NULL);
	if (!dev)
		die("alcOpenDevice");
	printf("device %s\n", alcGetString(dev, ALC_ALL_DEVICES_SPECIFIER));
	ctx = alcCreateContext(dev, attrs);
	if (!ctx || !alcMakeContextCurrent(ctx))
		die("alcCreateContext");
	alcGetIntegerv(dev, ALC_FREQUENCY, 1, &freq);
	printf("renderer %s, %d Hz\n", alGetString(AL_RENDERER), freq);
	alGenBuffers(1, &buf);
	alBufferData(buf, AL_FORMAT_STEREO16, snd, (ALsizei)len, 48000);
	alGenSources(1, &src);
	if (alIsExtensionPresent("AL_SOFT_direct_channels"))
		alSourcei(src, AL_DIRECT_CHANNELS_SOFT, AL_TRUE);
	else
		die("AL_SOFT_direct_channels missing");
	alSourcei(src, AL_BUFFER, (ALint)buf);
	if (alGetError() != AL_NO_ERROR)
		die("source setup");
	alSourcePlay(src);
	while (state == AL_PLAYING) {
		sleep_ms(20);
		alGetSourcei(src, AL_SOURCE_STATE, &state);
	}
	/* The mixer has rendered the last frame; let the device's queue play out. */
	sleep_ms(300);
	alDeleteSources(1, &src);
	alDeleteBuffers(1, &buf);
	alcMakeContextCurrent(NULL);
	alcDestroyContext(ctx);
	if (!alcCloseDevice(dev))
		die("alcCloseDevice");
	printf("frames %ld\n", len / 4);
	return 0;
}
