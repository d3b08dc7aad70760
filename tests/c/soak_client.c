/* soak_client: the clients of scripts/soak.sh, on alsa-lib's public API (PCM `shmix`).
 *
 *   soak_client ref SECONDS
 *       The reference stream: SECONDS of known noise on the LEFT channel (right silent), S16_LE
 *       48 kHz stereo, blocking writes, then drain, on PCM `shmix_ref` (shmix with a 2.5 s
 *       buffer ceiling) with a 2 s buffer: the player itself is a normal process on a loaded
 *       machine, and must not starve its own stream. Any error (an xrun included) fails it: a
 *       gap would break the bit-exact check anyway.
 *   soak_client churn SEED SECONDS
 *       One of the churning clients: until SECONDS have passed, session after session it opens
 *       the PCM (blocking or not), picks a format (S16_LE, S32_LE, FLOAT_LE), a rate (48000,
 *       44100, 32000, 22050), a buffer (40-300 ms) and a period, plays noise on the RIGHT channel
 *       only (left exactly 0, so the reference's channel stays its own), and at random pauses
 *       (snd_pcm_pause, 50-400 ms), stalls (underruns, recovered with prepare), then drains,
 *       drops or just closes. Unexpected errors are counted and fail it.
 *   soak_client check RECORDING SECONDS
 *       Checks the card's recording (raw S16_LE stereo): its left channel must be exactly the
 *       reference, contiguous, with only silence around it.
 *
 * Output: one `soak ...` line with the figures; exit 0 on success, 1 on failure, 2 on bad usage.
 */
#define _GNU_SOURCE
#include <alsa/asoundlib.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define REF_RATE 48000
#define REF_SEED 0x5eed1234u

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* xorshift32; never returns 0 from a non-zero state. */
static uint32_t xs(uint32_t *s)
{
	uint32_t x = *s;
	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	*s = x;
	return x;
}

/* The reference's next sample: noise in +-20000, never 0. */
static int16_t ref_sample(uint32_t *s)
{
	int v = (int)(xs(s) >> 16) % 20001;
	if (v == 0)
		v = 1;
	return (int16_t)((*s & 1) ? -v : v);
}

static int set_params(snd_pcm_t *pcm, snd_pcm_format_t fmt, unsigned rate, unsigned buffer_us,
		      unsigned periods, snd_pcm_uframes_t *buffer, snd_pcm_uframes_t *period)
{
	snd_pcm_hw_params_t *hw;
	snd_pcm_hw_params_alloca(&hw);
	int err;
	unsigned r = rate;
	unsigned bt = buffer_us, pt = buffer_us / periods;
	if ((err = snd_pcm_hw_params_any(pcm, hw)) < 0 ||
	    (err = snd_pcm_hw_params_set_access(pcm, hw, SND_PCM_ACCESS_RW_INTERLEAVED)) < 0 ||
	    (err = snd_pcm_hw_params_set_format(pcm, hw, fmt)) < 0 ||
	    (err = snd_pcm_hw_params_set_channels(pcm, hw, 2)) < 0 ||
	    (err = snd_pcm_hw_params_set_rate_near(pcm, hw, &r, 0)) < 0 ||
	    (err = snd_pcm_hw_params_set_buffer_time_near(pcm, hw, &bt, 0)) < 0 ||
	    (err = snd_pcm_hw_params_set_period_time_near(pcm, hw, &pt, 0)) < 0 ||
	    (err = snd_pcm_hw_params(pcm, hw)) < 0)
		return err;
	snd_pcm_hw_params_get_buffer_size(hw, buffer);
	snd_pcm_hw_params_get_period_size(hw, period, 0);
	return 0;
}

static int ref(double seconds)
{
	snd_pcm_t *pcm;
	snd_pcm_uframes_t buffer, period;
	int err = snd_pcm_open(&pcm, "shmix_ref", SND_PCM_STREAM_PLAYBACK, 0);
	if (err < 0) {
		printf("soak ref FAIL open: %s\n", snd_strerror(err));
		return 1;
	}
	double t0 = now_s();
	if ((err = set_params(pcm, SND_PCM_FORMAT_S16_LE, REF_RATE, 2000000, 20, &buffer, &period)) < 0) {
		printf("soak ref FAIL params: %s\n", snd_strerror(err));
		return 1;
	}
	uint32_t seed = REF_SEED;
	long total = (long)(seconds * REF_RATE), done = 0;
	int16_t buf[2 * 1024];
	while (done < total) {
		long n = total - done < 1024 ? total - done : 1024;
		for (long i = 0; i < n; i++) {
			buf[2 * i] = ref_sample(&seed);
			buf[2 * i + 1] = 0;
		}
		long off = 0;
		while (off < n) {
			snd_pcm_sframes_t w = snd_pcm_writei(pcm, buf + 2 * off, n - off);
			if (w < 0) {
				printf("soak ref FAIL write after %ld frames, %.1f s: %s\n", done + off, now_s() - t0,
				       snd_strerror((int)w));
				return 1;
			}
			off += w;
		}
		done += n;
	}
	if ((err = snd_pcm_drain(pcm)) < 0) {
		printf("soak ref FAIL drain: %s\n", snd_strerror(err));
		return 1;
	}
	snd_pcm_close(pcm);
	printf("soak ref ok frames %ld buffer %lu period %lu\n", total, (unsigned long)buffer,
	       (unsigned long)period);
	return 0;
}

static int check(const char *path, double seconds)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		printf("soak check FAIL cannot open %s\n", path);
		return 1;
	}
	long total = (long)(seconds * REF_RATE);
	uint32_t seed = REF_SEED;
	long frame = 0, start = -1, matched = 0, extra = 0;
	int16_t fr[2];
	while (fread(fr, sizeof fr, 1, f) == 1) {
		int16_t l = fr[0];
		if (start < 0) {
			if (l == 0) {
				frame++;
				continue;
			}
			start = frame;
		}
		if (matched < total) {
			int16_t want = ref_sample(&seed);
			if (l != want) {
				printf("soak check FAIL reference differs at its frame %ld (card frame %ld): got %d, want %d\n",
				       matched, frame, l, want);
				fclose(f);
				return 1;
			}
			matched++;
		} else if (l != 0) {
			extra++;
		}
		frame++;
	}
	fclose(f);
	if (matched < total) {
		printf("soak check FAIL reference incomplete: %ld of %ld frames (card recorded %ld frames)\n", matched,
		       total, frame);
		return 1;
	}
	if (extra) {
		printf("soak check FAIL %ld non-silent frames after the reference on its channel\n", extra);
		return 1;
	}
	printf("soak check ok reference %ld frames bit-exact and contiguous from card frame %ld of %ld\n", matched,
	       start, frame);
	return 0;
}

struct tally {
	long sessions, frames, pauses, stalls, xruns, drains, drops, closes, nonblock, errors;
};

static void fill(void *buf, snd_pcm_format_t fmt, long frames, uint32_t *s)
{
	for (long i = 0; i < frames; i++) {
		int v = (int)(xs(s) >> 16) % 2001 - 1000; /* right channel, quiet: 32 of them may sum */
		switch (fmt) {
		case SND_PCM_FORMAT_S16_LE:
			((int16_t *)buf)[2 * i] = 0;
			((int16_t *)buf)[2 * i + 1] = (int16_t)v;
			break;
		case SND_PCM_FORMAT_S32_LE:
			((int32_t *)buf)[2 * i] = 0;
			((int32_t *)buf)[2 * i + 1] = v * 65536;
			break;
		default:
			((float *)buf)[2 * i] = 0.0f;
			((float *)buf)[2 * i + 1] = (float)v / 32768.0f;
			break;
		}
	}
}

/* Writes `frames` frames, recovering from underruns; returns <0 on an unexpected error. */
static int play(snd_pcm_t *pcm, snd_pcm_format_t fmt, long frames, uint32_t *s, struct tally *t)
{
	static char buf[1024 * 2 * 4];
	while (frames > 0) {
		long n = frames < 1024 ? frames : 1 + (long)(xs(s) % 1024);
		if (n > frames)
			n = frames;
		fill(buf, fmt, n, s);
		long off = 0;
		int fb = snd_pcm_format_physical_width(fmt) / 8 * 2;
		while (off < n) {
			snd_pcm_sframes_t w = snd_pcm_writei(pcm, buf + off * fb, n - off);
			if (w == -EAGAIN) {
				snd_pcm_wait(pcm, 100);
				continue;
			}
			if (w == -EPIPE) {
				t->xruns++;
				int err = snd_pcm_prepare(pcm);
				if (err < 0)
					return err;
				continue;
			}
			if (w < 0)
				return (int)w;
			off += w;
			t->frames += w;
		}
		frames -= n;
	}
	return 0;
}

static int session(uint32_t *s, struct tally *t)
{
	static const snd_pcm_format_t fmts[] = {SND_PCM_FORMAT_S16_LE, SND_PCM_FORMAT_S32_LE, SND_PCM_FORMAT_FLOAT_LE};
	static const unsigned rates[] = {48000, 44100, 32000, 22050};
	snd_pcm_format_t fmt = fmts[xs(s) % 3];
	unsigned rate = rates[xs(s) % 4];
	int nonblock = xs(s) % 4 == 0;
	unsigned buffer_us = 40000 + xs(s) % 260000;
	unsigned periods = 2 + xs(s) % 3;
	snd_pcm_t *pcm;
	snd_pcm_uframes_t buffer, period;
	int err = snd_pcm_open(&pcm, "shmix", SND_PCM_STREAM_PLAYBACK, nonblock ? SND_PCM_NONBLOCK : 0);
	if (err < 0) {
		printf("soak churn error open: %s\n", snd_strerror(err));
		return err;
	}
	t->sessions++;
	t->nonblock += nonblock;
	if ((err = set_params(pcm, fmt, rate, buffer_us, periods, &buffer, &period)) < 0) {
		printf("soak churn error params %s %u Hz %u us: %s\n", snd_pcm_format_name(fmt), rate, buffer_us,
		       snd_strerror(err));
		snd_pcm_close(pcm);
		return err;
	}
	int steps = 1 + xs(s) % 4;
	for (int i = 0; i < steps && err >= 0; i++) {
		long frames = (long)rate * (100 + xs(s) % 600) / 1000;
		if ((err = play(pcm, fmt, frames, s, t)) < 0)
			break;
		switch (xs(s) % 4) {
		case 0:
			if (snd_pcm_state(pcm) == SND_PCM_STATE_RUNNING) {
				if ((err = snd_pcm_pause(pcm, 1)) < 0)
					break;
				usleep(50000 + xs(s) % 350000);
				if ((err = snd_pcm_pause(pcm, 0)) < 0)
					break;
				t->pauses++;
			}
			break;
		case 1:
			/* Stall: stop writing past the buffer's end (an underrun, recovered next write). */
			usleep((unsigned)((double)buffer / rate * 1e6) + xs(s) % 100000);
			t->stalls++;
			break;
		default:
			break;
		}
	}
	if (err < 0) {
		printf("soak churn error during %s %u Hz session: %s\n", snd_pcm_format_name(fmt), rate,
		       snd_strerror(err));
		snd_pcm_close(pcm);
		return err;
	}
	switch (xs(s) % 3) {
	case 0:
		snd_pcm_nonblock(pcm, 0);
		err = snd_pcm_drain(pcm);
		/* A stream that underran at its very end is in XRUN: drain reports it. */
		if (err < 0 && err != -EPIPE) {
			printf("soak churn error drain: %s\n", snd_strerror(err));
			snd_pcm_close(pcm);
			return err;
		}
		t->drains++;
		break;
	case 1:
		snd_pcm_drop(pcm);
		t->drops++;
		break;
	default:
		t->closes++;
		break;
	}
	snd_pcm_close(pcm);
	return 0;
}

static int churn(uint32_t seed, double seconds)
{
	struct tally t = {0};
	uint32_t s = seed * 2654435761u | 1;
	double end = now_s() + seconds;
	while (now_s() < end) {
		if (session(&s, &t) < 0)
			t.errors++;
		usleep(xs(&s) % 200000);
	}
	printf("soak churn seed %u sessions %ld frames %ld pauses %ld stalls %ld xruns %ld drains %ld drops %ld "
	       "closes %ld nonblock %ld errors %ld\n",
	       seed, t.sessions, t.frames, t.pauses, t.stalls, t.xruns, t.drains, t.drops, t.closes, t.nonblock,
	       t.errors);
	return t.errors ? 1 : 0;
}

int main(int argc, char **argv)
{
	if (argc == 3 && !strcmp(argv[1], "ref"))
		return ref(atof(argv[2]));
	if (argc == 4 && !strcmp(argv[1], "churn"))
		return churn((uint32_t)strtoul(argv[2], 0, 10), atof(argv[3]));
	if (argc == 4 && !strcmp(argv[1], "check"))
		return check(argv[2], atof(argv[3]));
	fprintf(stderr, "usage: soak_client ref SECONDS | churn SEED SECONDS | check RECORDING SECONDS\n");
	return 2;
}
