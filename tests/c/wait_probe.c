/* wait_probe: what a client of `shmix` sees while the card is gone. Plays SECONDS of S16_LE 48 kHz
 * stereo noise (left channel only, seed fixed; the test regenerates it) in non-blocking mode from
 * a poll loop on the PCM's descriptors (50 ms timeout), and samples snd_pcm_avail and
 * snd_pcm_delay on every turn. While MARKER (the card's gone_file) has existed for at least
 * 400 ms, it records the range of avail and delay, how often poll woke with POLLOUT, timed out or
 * reported an error, and how many frames it managed to write. Then it drains and exits 0.
 *
 * Usage: wait_probe SECONDS MARKER
 * Output: `wait samples N avail_min A avail_max B delay_min C delay_max D pollout P timeouts T
 *          pollerr E written_while_gone W buffer F` and `done frames N`; exit 1 on an error.
 */
#define _GNU_SOURCE
#include <alsa/asoundlib.h>
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define RATE 48000

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Same generator as tests/common noise(): xorshift32, +-20000, never 0. */
static int16_t next_sample(uint32_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 17;
	*x ^= *x << 5;
	int v = (int)((*x >> 16) % 20001);
	if (v == 0)
		return 1;
	return (*x & 1) == 0 ? (int16_t)v : (int16_t)-v;
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: wait_probe SECONDS MARKER\n");
		return 2;
	}
	long total = (long)(atof(argv[1]) * RATE);
	const char *marker = argv[2];
	snd_pcm_t *pcm;
	int err = snd_pcm_open(&pcm, "shmix", SND_PCM_STREAM_PLAYBACK, SND_PCM_NONBLOCK);
	if (err < 0 || (err = snd_pcm_set_params(pcm, SND_PCM_FORMAT_S16_LE, SND_PCM_ACCESS_RW_INTERLEAVED, 2, RATE, 0,
						 200000)) < 0) {
		printf("error open: %s\n", snd_strerror(err));
		return 1;
	}
	snd_pcm_uframes_t buffer, period;
	snd_pcm_get_params(pcm, &buffer, &period);
	int nfds = snd_pcm_poll_descriptors_count(pcm);
	struct pollfd pfds[8];
	if (nfds < 1 || nfds > 8 || snd_pcm_poll_descriptors(pcm, pfds, nfds) != nfds) {
		printf("error poll descriptors\n");
		return 1;
	}
	uint32_t seed = 77;
	int16_t buf[2 * 1024];
	long written = 0, chunk = 0, chunk_off = 0;
	double gone_since = -1;
	long samples = 0, pollout = 0, timeouts = 0, pollerr = 0, written_gone = 0;
	long amin = 1L << 40, amax = -1, dmin = 1L << 40, dmax = -1;
	while (written < total) {
		if (chunk_off == chunk) {
			chunk = total - written < 1024 ? total - written : 1024;
			for (long i = 0; i < chunk; i++) {
				buf[2 * i] = next_sample(&seed);
				buf[2 * i + 1] = 0;
			}
			chunk_off = 0;
		}
		snd_pcm_sframes_t w = snd_pcm_writei(pcm, buf + 2 * chunk_off, chunk - chunk_off);
		if (w == -EPIPE) {
			printf("error underrun after %ld frames\n", written);
			return 1;
		}
		if (w < 0 && w != -EAGAIN) {
			printf("error write: %s\n", snd_strerror((int)w));
			return 1;
		}
		int settled = 0;
		if (access(marker, F_OK) == 0) {
			if (gone_since < 0)
				gone_since = now_s();
			settled = now_s() - gone_since >= 0.4;
		} else {
			gone_since = -1;
		}
		if (w > 0) {
			written += w;
			chunk_off += w;
			if (settled)
				written_gone += w;
		}
		if (settled) {
			snd_pcm_sframes_t a = snd_pcm_avail(pcm), d = 0;
			if (a < 0 || (err = snd_pcm_delay(pcm, &d)) < 0) {
				printf("error avail/delay while gone: %s\n", snd_strerror(a < 0 ? (int)a : err));
				return 1;
			}
			samples++;
			amin = a < amin ? a : amin;
			amax = a > amax ? a : amax;
			dmin = d < dmin ? d : dmin;
			dmax = d > dmax ? d : dmax;
		}
		if (w > 0 && chunk_off < chunk)
			continue;
		if (w > 0)
			continue;
		int r = poll(pfds, nfds, 50);
		unsigned short rev = 0;
		if (r > 0)
			snd_pcm_poll_descriptors_revents(pcm, pfds, nfds, &rev);
		if (settled) {
			if (r == 0)
				timeouts++;
			else if (rev & POLLERR)
				pollerr++;
			else if (rev & POLLOUT)
				pollout++;
		}
	}
	printf("wait samples %ld avail_min %ld avail_max %ld delay_min %ld delay_max %ld pollout %ld timeouts %ld "
	       "pollerr %ld written_while_gone %ld buffer %lu\n",
	       samples, amin, amax, dmin, dmax, pollout, timeouts, pollerr, written_gone, (unsigned long)buffer);
	snd_pcm_nonblock(pcm, 0);
	if ((err = snd_pcm_drain(pcm)) < 0) {
		printf("error drain: %s\n", snd_strerror(err));
		return 1;
	}
	snd_pcm_close(pcm);
	printf("done frames %ld\n", written);
	return 0;
}
