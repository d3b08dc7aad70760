/* latency_client: a low-latency playback client of the `shmix` PCM, as a game or a JACK-style
 * program is: a small buffer (period 64 / buffer 256 frames at 48 kHz), blocking writes of one
 * period, and (with `rt`) SCHED_FIFO below the daemon's mix thread, as rtkit would grant it.
 * Built and run by tests/latency.rs. It prints machine-readable lines:
 *   sched fifo|other            what scheduling it got
 *   hw period N buffer N        the hw_params read back (not forced: the test checks them)
 *   first_write_ns T0 T1        CLOCK_MONOTONIC around the writei that handed over frame 0
 *   start_ns T                  CLOCK_MONOTONIC right after the writei that started the stream
 *   value NAME NUMBER           figures (delay after writes, in frames)
 *   xrun at frame N             an underrun its writei reported (it prepares and goes on)
 *   written N / xruns N         at the end, after the drain
 * Exit 0 when the drain succeeded, 2 on a setup or I/O error.
 *
 * Usage: latency_client SOUND PERIOD BUFFER [rt]
 * SOUND: raw S16_LE stereo 48 kHz frames.
 */
#define _GNU_SOURCE
#include <alsa/asoundlib.h>
#include <errno.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define RATE 48000
#define CHANNELS 2
/* Below the daemon's mix thread (SCHED_FIFO 20): the client must never delay the mix. */
#define CLIENT_RT_PRIO 10

static void die(const char *what, int err)
{
	printf("error %s: %s (%d)\n", what, err < 0 ? snd_strerror(err) : "", err);
	fflush(stdout);
	exit(2);
}

static long long mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	snd_pcm_t *pcm;
	snd_pcm_hw_params_t *hw;
	snd_pcm_sw_params_t *sw;
	snd_pcm_uframes_t period, buffer, pos = 0, frames;
	int16_t *s;
	FILE *f;
	long len;
	int err, xruns = 0, started = 0;
	double delay_sum = 0;
	long delay_n = 0, delay_min = -1, delay_max = 0;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc < 4 || argc > 5 || (argc == 5 && strcmp(argv[4], "rt"))) {
		fprintf(stderr, "usage: latency_client SOUND PERIOD BUFFER [rt]\n");
		return 2;
	}
	period = strtoul(argv[2], NULL, 10);
	buffer = strtoul(argv[3], NULL, 10);

	if (!(f = fopen(argv[1], "rb")))
		die("open sound file", -errno);
	fseek(f, 0, SEEK_END);
	len = ftell(f);
	fseek(f, 0, SEEK_SET);
	s = malloc(len);
	if (!s || fread(s, 1, len, f) != (size_t)len)
		die("read sound file", -EIO);
	fclose(f);
	frames = len / (2 * CHANNELS);

	if (argc == 5) {
		struct sched_param sp = { .sched_priority = CLIENT_RT_PRIO };
		int ok = sched_setscheduler(0, SCHED_FIFO, &sp) == 0;
		/* Page faults in a 5 ms loop are scheduling delays too. */
		if (ok)
			mlockall(MCL_CURRENT | MCL_FUTURE);
		printf("sched %s\n", ok ? "fifo" : "other");
	} else {
		printf("sched other\n");
	}

	if ((err = snd_pcm_open(&pcm, "shmix", SND_PCM_STREAM_PLAYBACK, 0)) < 0)
		die("snd_pcm_open shmix", err);
	snd_pcm_hw_params_alloca(&hw);
	snd_pcm_sw_params_alloca(&sw);
	if ((err = snd_pcm_hw_params_any(pcm, hw)) < 0)
		die("hw_params_any", err);
	if ((err = snd_pcm_hw_params_set_access(pcm, hw, SND_PCM_ACCESS_RW_INTERLEAVED)) < 0)
		die("set_access", err);
	if ((err = snd_pcm_hw_params_set_format(pcm, hw, SND_PCM_FORMAT_S16_LE)) < 0)
		die("set_format", err);
	if ((err = snd_pcm_hw_params_set_channels(pcm, hw, CHANNELS)) < 0)
		die("set_channels", err);
	if ((err = snd_pcm_hw_params_set_rate(pcm, hw, RATE, 0)) < 0)
		die("set_rate", err);
	/* _near: the configuration space decides; what it gave is printed and checked by the test. */
	if ((err = snd_pcm_hw_params_set_period_size_near(pcm, hw, &period, NULL)) < 0)
		die("set_period_size_near", err);
	if ((err = snd_pcm_hw_params_set_buffer_size_near(pcm, hw, &buffer)) < 0)
		die("set_buffer_size_near", err);
	if ((err = snd_pcm_hw_params(pcm, hw)) < 0)
		die("hw_params", err);
	if ((err = snd_pcm_hw_params_get_period_size(hw, &period, NULL)) < 0 ||
	    (err = snd_pcm_hw_params_get_buffer_size(hw, &buffer)) < 0)
		die("hw_params_get", err);
	printf("hw period %lu buffer %lu\n", (unsigned long)period, (unsigned long)buffer);
	if ((err = snd_pcm_sw_params_current(pcm, sw)) < 0)
		die("sw_params_current", err);
	if ((err = snd_pcm_sw_params_set_avail_min(pcm, sw, period)) < 0)
		die("set_avail_min", err);
	/* Start when the buffer is full, as aplay does. */
	if ((err = snd_pcm_sw_params_set_start_threshold(pcm, sw, buffer)) < 0)
		die("set_start_threshold", err);
	if ((err = snd_pcm_sw_params(pcm, sw)) < 0)
		die("sw_params", err);

	while (pos < frames) {
		snd_pcm_uframes_t n = frames - pos < period ? frames - pos : period;
		long long t0 = mono_ns(), t1;
		snd_pcm_sframes_t r = snd_pcm_writei(pcm, s + pos * CHANNELS, n), d;
		t1 = mono_ns();
		if (pos == 0 && r > 0)
			printf("first_write_ns %lld %lld\n", t0, t1);
		if (r == -EPIPE) {
			printf("xrun at frame %lu\n", (unsigned long)pos);
			xruns++;
			started = 0;
			if ((err = snd_pcm_prepare(pcm)) < 0)
				die("prepare after xrun", err);
			continue;
		}
		if (r < 0)
			die("snd_pcm_writei", (int)r);
		pos += r;
		if (snd_pcm_state(pcm) != SND_PCM_STATE_RUNNING)
			continue;
		if (!started) {
			started = 1;
			printf("start_ns %lld\n", t1);
			continue; /* the first delay would be the full buffer before any play */
		}
		if (snd_pcm_delay(pcm, &d) < 0)
			continue;
		delay_sum += d;
		delay_n++;
		if (delay_min < 0 || d < delay_min)
			delay_min = d;
		if (d > delay_max)
			delay_max = d;
	}
	err = snd_pcm_drain(pcm);
	if (err < 0)
		die("snd_pcm_drain", err);
	printf("value delay_mean_frames %.3f\n", delay_n ? delay_sum / delay_n : -1.0);
	printf("value delay_min_frames %ld\n", delay_min);
	printf("value delay_max_frames %ld\n", delay_max);
	printf("value delay_samples %ld\n", delay_n);
	printf("written %lu\n", (unsigned long)pos);
	printf("xruns %d\n", xruns);
	snd_pcm_close(pcm);
	free(s);
	return 0;
}
