/* pcm_semantics: drives the `shmix` PCM through alsa-lib's public API and checks its semantics.
 * Built and run by tests/semantics.rs. Every check prints one machine-readable line
 *   check <name> ok|FAIL key=value ...
 * and figures print as
 *   value <name> <number>
 * The program exits 1 if any check failed, 2 on a setup error. Audio comes from raw S16_LE stereo
 * files the test wrote; the test compares the card's recording with them.
 *
 * Usage: pcm_semantics basic SOUND | pause SOUND | drop SOUND1 SOUND2 | nonblock SOUND
 *        | short SOUND | stall SOUND DAEMON_PID | abort SOUND | cycles N
 *        | truth SOUND [PERIOD BUFFER rw|mmap] | xrun_status SOUND | abort_thread SOUND
 *        | reset S1 S2 running|prepared [mmap] | reset_capture PRE_OUT POST_OUT | fork SOUND
 */
#define _GNU_SOURCE
#include <alsa/asoundlib.h>
#include <dirent.h>
#include <malloc.h>
#include <math.h>
#include <pthread.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define RATE 48000
#define CHANNELS 2
#define BUFFER 4096
#define PERIOD 1024

static int failures;
/* The buffer `setup` asks for: BUFFER, or more for commands that must not underrun while they
 * check something else (this program is not a real-time client; under load 8-10 on two cores a
 * 4096-frame (85 ms) buffer ran dry now and then). */
static snd_pcm_uframes_t buffer_frames = BUFFER;
/* RW unless a command asks for MMAP_INTERLEAVED (then writes go through snd_pcm_mmap_writei). */
static snd_pcm_access_t access_mode = SND_PCM_ACCESS_RW_INTERLEAVED;

static void check(const char *name, int ok, const char *fmt, ...)
{
	va_list ap;
	printf("check %s %s", name, ok ? "ok" : "FAIL");
	if (fmt && *fmt) {
		putchar(' ');
		va_start(ap, fmt);
		vprintf(fmt, ap);
		va_end(ap);
	}
	putchar('\n');
	fflush(stdout);
	if (!ok)
		failures++;
}

static void value(const char *name, double v)
{
	printf("value %s %.3f\n", name, v);
	fflush(stdout);
}

static void die(const char *what, int err)
{
	printf("error %s: %s (%d)\n", what, err < 0 ? snd_strerror(err) : "", err);
	fflush(stdout);
	exit(2);
}

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void sleep_ms(double ms)
{
	struct timespec ts = { (time_t)(ms / 1000), (long)((ms - (time_t)(ms / 1000) * 1000) * 1e6) };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* The sound to play, and how much of it has been handed to the PCM. */
struct sound {
	int16_t *s;
	snd_pcm_uframes_t frames, pos;
};

static struct sound load(const char *path)
{
	struct sound snd = { 0 };
	FILE *f = fopen(path, "rb");
	long len;
	if (!f)
		die("open sound file", -errno);
	fseek(f, 0, SEEK_END);
	len = ftell(f);
	fseek(f, 0, SEEK_SET);
	snd.s = malloc(len);
	if (!snd.s || fread(snd.s, 1, len, f) != (size_t)len)
		die("read sound file", -EIO);
	fclose(f);
	snd.frames = len / (2 * CHANNELS);
	return snd;
}

/* Writes up to `n` frames of the sound (fewer at its end); returns frames written or -errno. */
static snd_pcm_sframes_t play(snd_pcm_t *pcm, struct sound *snd, snd_pcm_uframes_t n)
{
	snd_pcm_sframes_t r;
	if (n > snd->frames - snd->pos)
		n = snd->frames - snd->pos;
	if (n == 0)
		return 0;
	if (access_mode == SND_PCM_ACCESS_MMAP_INTERLEAVED)
		r = snd_pcm_mmap_writei(pcm, snd->s + snd->pos * CHANNELS, n);
	else
		r = snd_pcm_writei(pcm, snd->s + snd->pos * CHANNELS, n);
	if (r > 0)
		snd->pos += r;
	return r;
}

/* Plays (blocking) until `ms` of audio has been written in total or the sound ends. */
static void play_until_ms(snd_pcm_t *pcm, struct sound *snd, double ms)
{
	while (snd->pos < (snd_pcm_uframes_t)(ms * RATE / 1000) && snd->pos < snd->frames) {
		snd_pcm_sframes_t r = play(pcm, snd, PERIOD);
		if (r < 0) {
			snd_output_t *o;
			snd_pcm_status_t *st;
			snd_pcm_status_alloca(&st);
			printf("writei failed at frame %lu, %.3f ms: status:\n", (unsigned long)snd->pos, now_ms());
			if (snd_pcm_status(pcm, st) == 0 && snd_output_stdio_attach(&o, stdout, 0) == 0) {
				snd_pcm_status_dump(st, o);
				snd_output_close(o);
			}
			die("snd_pcm_writei", (int)r);
		}
	}
}

static snd_pcm_t *open_pcm(int mode)
{
	snd_pcm_t *pcm;
	int err = snd_pcm_open(&pcm, "shmix", SND_PCM_STREAM_PLAYBACK, mode);
	if (err < 0)
		die("snd_pcm_open shmix", err);
	return pcm;
}

/* S16_LE 48 kHz stereo RW interleaved, `buffer` and `period` exactly, avail_min one period;
 * `start_threshold` 0 = the buffer size (start when full, as aplay does: alsa-lib's default of 1
 * would start with one period queued and underrun on a loaded machine). */
static void setup_sized(snd_pcm_t *pcm, snd_pcm_uframes_t buffer, snd_pcm_uframes_t period,
			snd_pcm_uframes_t start_threshold)
{
	snd_pcm_hw_params_t *hw;
	snd_pcm_sw_params_t *sw;
	snd_pcm_uframes_t want_buffer, want_period;
	int err;
	snd_pcm_hw_params_alloca(&hw);
	snd_pcm_sw_params_alloca(&sw);
	if ((err = snd_pcm_hw_params_any(pcm, hw)) < 0)
		die("hw_params_any", err);
	if ((err = snd_pcm_hw_params_set_access(pcm, hw, access_mode)) < 0)
		die("set_access", err);
	if ((err = snd_pcm_hw_params_set_format(pcm, hw, SND_PCM_FORMAT_S16_LE)) < 0)
		die("set_format", err);
	if ((err = snd_pcm_hw_params_set_channels(pcm, hw, CHANNELS)) < 0)
		die("set_channels", err);
	if ((err = snd_pcm_hw_params_set_rate(pcm, hw, RATE, 0)) < 0)
		die("set_rate", err);
	want_buffer = buffer;
	want_period = period;
	if ((err = snd_pcm_hw_params_set_period_size(pcm, hw, period, 0)) < 0)
		die("set_period_size", err);
	if ((err = snd_pcm_hw_params_set_buffer_size(pcm, hw, buffer)) < 0)
		die("set_buffer_size", err);
	if ((err = snd_pcm_hw_params(pcm, hw)) < 0)
		die("hw_params", err);
	if (snd_pcm_hw_params_get_buffer_size(hw, &buffer) < 0 || buffer != want_buffer ||
	    snd_pcm_hw_params_get_period_size(hw, &period, NULL) < 0 || period != want_period)
		die("hw_params did not give the requested buffer/period", -EINVAL);
	if ((err = snd_pcm_sw_params_current(pcm, sw)) < 0)
		die("sw_params_current", err);
	if ((err = snd_pcm_sw_params_set_avail_min(pcm, sw, period)) < 0)
		die("set_avail_min", err);
	if ((err = snd_pcm_sw_params_set_start_threshold(pcm, sw, start_threshold ? start_threshold : buffer)) < 0)
		die("set_start_threshold", err);
	if ((err = snd_pcm_sw_params(pcm, sw)) < 0)
		die("sw_params", err);
}

/* The common setup: buffer `buffer_frames` (4096 unless a command says otherwise), period 1024. */
static void setup(snd_pcm_t *pcm, snd_pcm_uframes_t start_threshold)
{
	setup_sized(pcm, buffer_frames, PERIOD, start_threshold);
}

static int count_fds(void)
{
	int n = 0;
	struct dirent *e;
	DIR *d = opendir("/proc/self/fd");
	if (!d)
		die("opendir /proc/self/fd", -errno);
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n - 1; /* the directory's own fd */
}

static int count_memfd_maps(void)
{
	char line[512];
	int n = 0;
	FILE *f = fopen("/proc/self/maps", "r");
	if (!f)
		die("open /proc/self/maps", -errno);
	while (fgets(line, sizeof line, f))
		if (strstr(line, "memfd:"))
			n++;
	fclose(f);
	return n;
}

static double ts_ms(snd_htimestamp_t t)
{
	return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

/* (a) delay after prepare, (b) delay before start, (h) status after start, (c) delay while
 * running, (i) snd_pcm_wait timeout with a full buffer, (f) drain duration. */
static void cmd_basic(const char *path)
{
	struct sound snd = load(path);
	snd_pcm_t *pcm = open_pcm(0);
	snd_pcm_sframes_t delay = -1, avail, prev;
	snd_pcm_status_t *st;
	snd_htimestamp_t trig, tnow;
	struct timespec mono, real;
	int err, samples = 0, increases = 0, negatives = 0, below_fill = 0;
	long min_delay = 1 << 30, max_delay = -1, worst_below = 0;
	double t0, t, trig_ms, now_status_ms;

	setup(pcm, 2 * buffer_frames); /* never reached by writes: only snd_pcm_start starts */
	if ((err = snd_pcm_prepare(pcm)) < 0)
		die("prepare", err);
	err = snd_pcm_delay(pcm, &delay);
	check("delay_after_prepare", err == 0 && delay == 0, "err=%d delay=%ld", err, (long)delay);

	/* (b) two periods before start: the stream must not start, delay is what we wrote. */
	play_until_ms(pcm, &snd, 2.0 * PERIOD * 1000 / RATE);
	sleep_ms(50);
	err = snd_pcm_delay(pcm, &delay);
	check("delay_before_start", err == 0 && delay == 2 * PERIOD && snd.pos == 2 * PERIOD &&
		  snd_pcm_state(pcm) == SND_PCM_STATE_PREPARED,
	      "err=%d delay=%ld written=%lu state=%s", err, (long)delay, (unsigned long)snd.pos,
	      snd_pcm_state_name(snd_pcm_state(pcm)));

	/* Fill the rest before starting, so a loaded machine does not underrun at once. */
	play_until_ms(pcm, &snd, 1000.0 * buffer_frames / RATE);
	err = snd_pcm_delay(pcm, &delay);
	check("delay_full_before_start", err == 0 && delay == (snd_pcm_sframes_t)buffer_frames && snd_pcm_state(pcm) == SND_PCM_STATE_PREPARED,
	      "err=%d delay=%ld state=%s", err, (long)delay, snd_pcm_state_name(snd_pcm_state(pcm)));
	if ((err = snd_pcm_start(pcm)) < 0)
		die("start", err);

	/* (h) status right after start. */
	snd_pcm_status_alloca(&st);
	if ((err = snd_pcm_status(pcm, st)) < 0)
		die("status", err);
	snd_pcm_status_get_trigger_htstamp(st, &trig);
	snd_pcm_status_get_htstamp(st, &tnow);
	clock_gettime(CLOCK_MONOTONIC, &mono);
	clock_gettime(CLOCK_REALTIME, &real);
	trig_ms = ts_ms(trig);
	now_status_ms = ts_ms(tnow);
	{
		double dm = trig_ms - (mono.tv_sec * 1e3 + mono.tv_nsec / 1e6);
		double dr = trig_ms - (real.tv_sec * 1e3 + real.tv_nsec / 1e6);
		double best = fabs(dm) < fabs(dr) ? dm : dr;
		double vs_status = now_status_ms - trig_ms;
		check("status_after_start",
		      snd_pcm_status_get_state(st) == SND_PCM_STATE_RUNNING && fabs(best) < 5000 &&
			  vs_status > -1 && vs_status < 5000,
		      "state=%s trigger_minus_clock_ms=%.3f status_tstamp_minus_trigger_ms=%.3f",
		      snd_pcm_state_name(snd_pcm_status_get_state(st)), best, vs_status);
		value("trigger_minus_clock_ms", best);
	}

	/* (c) delay sampled every ~5 ms for 1 s, buffer kept topped up. */
	prev = -1;
	t0 = now_ms();
	while ((t = now_ms()) - t0 < 1000) {
		snd_pcm_sframes_t a, d, wrote = 0;
		/* delay first, then avail: the fill can only shrink in between, so d >= buffer - a
		 * must hold exactly. */
		if ((err = snd_pcm_delay(pcm, &d)) < 0)
			die("delay", err);
		if ((a = snd_pcm_avail(pcm)) < 0)
			die("avail", (int)a);
		samples++;
		if (d < 0)
			negatives++;
		if (prev >= 0 && d > prev)
			increases++;
		if (d < min_delay)
			min_delay = d;
		if (d > max_delay)
			max_delay = d;
		/* Frames in our buffer have not been heard: delay >= buffer - avail. */
		if (d < (snd_pcm_sframes_t)buffer_frames - a) {
			below_fill++;
			if ((snd_pcm_sframes_t)buffer_frames - a - d > worst_below)
				worst_below = (snd_pcm_sframes_t)buffer_frames - a - d;
		}
		if (a >= PERIOD) {
			snd_pcm_sframes_t r = play(pcm, &snd, a);
			if (r < 0)
				die("writei", (int)r);
			wrote = r;
		}
		/* Compare the next sample with the delay after the write (a write may raise it). */
		if (wrote) {
			if ((err = snd_pcm_delay(pcm, &d)) < 0)
				die("delay", err);
		}
		prev = d;
		sleep_ms(5);
	}
	check("delay_while_running", negatives == 0 && increases == 0 && below_fill == 0 && samples >= 50,
	      "samples=%d negatives=%d increases=%d below_fill=%d worst_below=%ld min=%ld max=%ld", samples,
	      negatives, increases, below_fill, worst_below, min_delay, max_delay);
	value("delay_min_frames", min_delay);
	value("delay_max_frames", max_delay);
	value("delay_samples", samples);

	/* (i) full buffer: snd_pcm_wait(10 ms) does not return before avail reaches avail_min: it
	 * times out, or it returns ready with a period free (the daemon consumes in steps of up to
	 * the client's period, so a step may come within the 10 ms). */
	avail = snd_pcm_avail(pcm);
	if (avail > 0 && play(pcm, &snd, avail) < 0)
		die("writei (fill)", -EIO);
	t0 = now_ms();
	err = snd_pcm_wait(pcm, 10);
	t = now_ms() - t0;
	avail = snd_pcm_avail(pcm);
	check("wait_full_buffer_times_out",
	      (err == 0 && t >= 5 && t < 100) || (err == 1 && avail >= PERIOD && t < 100),
	      "ret=%d elapsed_ms=%.3f avail_after=%ld", err, t, (long)avail);
	value("wait_ms", t);

	/* (f) drain: returns 0 after about the queued audio. */
	if ((err = snd_pcm_avail_delay(pcm, &avail, &delay)) < 0)
		die("avail_delay", err);
	prev = (snd_pcm_sframes_t)buffer_frames - avail; /* frames in our buffer */
	t0 = now_ms();
	err = snd_pcm_drain(pcm);
	t = now_ms() - t0;
	{
		double fill_ms = prev * 1000.0 / RATE, delay_ms = delay * 1000.0 / RATE;
		check("drain", err == 0 && t >= fill_ms - 50 && t < delay_ms + 1500 &&
				   snd_pcm_state(pcm) == SND_PCM_STATE_SETUP,
		      "ret=%d elapsed_ms=%.3f fill_ms=%.3f delay_ms=%.3f state=%s", err, t, fill_ms, delay_ms,
		      snd_pcm_state_name(snd_pcm_state(pcm)));
		value("drain_ms", t);
		value("drain_queued_ms", delay_ms);
	}
	printf("written %lu\n", (unsigned long)snd.pos);
	snd_pcm_close(pcm);
}

/* (d) pause 300 ms mid-stream, then resume and finish. */
static void cmd_pause(const char *path)
{
	struct sound snd = load(path);
	snd_pcm_t *pcm = open_pcm(0);
	snd_pcm_sframes_t a1, d1, a2, d2;
	snd_pcm_status_t *st;
	int err, can;
	double t0, t;
	snd_pcm_hw_params_t *hw;

	setup(pcm, 0);
	snd_pcm_hw_params_alloca(&hw);
	snd_pcm_hw_params_current(pcm, hw);
	can = snd_pcm_hw_params_can_pause(hw);
	check("can_pause", can == 1, "can_pause=%d", can);
	play_until_ms(pcm, &snd, 500);
	if ((err = snd_pcm_pause(pcm, 1)) < 0)
		die("pause 1", err);
	t0 = now_ms();
	sleep_ms(30); /* let the daemon see Pause */
	if ((err = snd_pcm_avail_delay(pcm, &a1, &d1)) < 0)
		die("avail_delay (paused)", err);
	sleep_ms(270);
	if ((err = snd_pcm_avail_delay(pcm, &a2, &d2)) < 0)
		die("avail_delay (paused)", err);
	snd_pcm_status_alloca(&st);
	snd_pcm_status(pcm, st);
	check("paused_holds", a1 == a2 && d2 <= d1 && d2 >= BUFFER - a2 &&
			      snd_pcm_status_get_state(st) == SND_PCM_STATE_PAUSED,
	      "avail=%ld->%ld delay=%ld->%ld state=%s", (long)a1, (long)a2, (long)d1, (long)d2,
	      snd_pcm_state_name(snd_pcm_status_get_state(st)));
	value("paused_delay_frames", d2);
	while ((t = now_ms() - t0) < 300)
		sleep_ms(300 - t);
	if ((err = snd_pcm_pause(pcm, 0)) < 0)
		die("pause 0", err);
	value("paused_ms", now_ms() - t0);
	printf("paused_at %lu\n", (unsigned long)snd.pos);
	play_until_ms(pcm, &snd, 1e9);
	err = snd_pcm_drain(pcm);
	check("pause_drain", err == 0, "ret=%d", err);
	printf("written %lu\n", (unsigned long)snd.pos);
	snd_pcm_close(pcm);
}

/* (e) drop mid-stream, prepare, play a second burst. */
static void cmd_drop(const char *p1, const char *p2)
{
	struct sound s1 = load(p1), s2 = load(p2);
	snd_pcm_t *pcm = open_pcm(0);
	snd_pcm_sframes_t d = -1, a;
	int err;

	setup(pcm, 0);
	play_until_ms(pcm, &s1, 400);
	err = snd_pcm_drop(pcm);
	check("drop", err == 0 && snd_pcm_state(pcm) == SND_PCM_STATE_SETUP, "ret=%d state=%s", err,
	      snd_pcm_state_name(snd_pcm_state(pcm)));
	printf("written1 %lu\n", (unsigned long)s1.pos);
	/* Dropping twice is harmless. */
	err = snd_pcm_drop(pcm);
	check("drop_again", err == 0, "ret=%d", err);
	if ((err = snd_pcm_prepare(pcm)) < 0)
		die("prepare after drop", err);
	a = snd_pcm_avail(pcm);
	err = snd_pcm_delay(pcm, &d);
	check("prepared_after_drop", err == 0 && d == 0 && a == BUFFER, "delay=%ld avail=%ld", (long)d, (long)a);
	play_until_ms(pcm, &s2, 1e9);
	err = snd_pcm_drain(pcm);
	check("drop_second_burst_drain", err == 0, "ret=%d", err);
	printf("written2 %lu\n", (unsigned long)s2.pos);
	snd_pcm_close(pcm);
}

/* (g) non-blocking mode: drain says -EAGAIN at once; the stream then drains by poll. */
static void cmd_nonblock(const char *path)
{
	struct sound snd = load(path);
	snd_pcm_t *pcm = open_pcm(SND_PCM_NONBLOCK);
	int err, loops = 0, waits = 0;
	double t0, t;

	setup(pcm, 0);
	while (snd.pos < snd.frames) {
		snd_pcm_sframes_t r = play(pcm, &snd, PERIOD);
		if (r == -EAGAIN) {
			waits++;
			if ((err = snd_pcm_wait(pcm, 1000)) < 0)
				die("wait", err);
		} else if (r < 0) {
			die("writei", (int)r);
		}
	}
	t0 = now_ms();
	err = snd_pcm_drain(pcm);
	t = now_ms() - t0;
	check("nonblock_drain_eagain", err == -EAGAIN && t < 100, "ret=%d elapsed_ms=%.3f state=%s", err, t,
	      snd_pcm_state_name(snd_pcm_state(pcm)));
	while (err == -EAGAIN && now_ms() - t0 < 5000) {
		loops++;
		snd_pcm_wait(pcm, 1000);
		err = snd_pcm_drain(pcm);
	}
	t = now_ms() - t0;
	check("nonblock_drain_completes", err == 0 && snd_pcm_state(pcm) == SND_PCM_STATE_SETUP && loops < 50,
	      "ret=%d loops=%d elapsed_ms=%.3f state=%s write_waits=%d", err, loops, t,
	      snd_pcm_state_name(snd_pcm_state(pcm)), waits);
	value("nonblock_drain_loops", loops);
	printf("written %lu\n", (unsigned long)snd.pos);
	snd_pcm_close(pcm);
}

/* A sound shorter than a period, never started by the start threshold: drain plays it all. */
static void cmd_short(const char *path)
{
	struct sound snd = load(path);
	snd_pcm_t *pcm = open_pcm(0);
	snd_pcm_sframes_t d = -1;
	int err;
	double t0, t;

	setup(pcm, 2 * BUFFER);
	if ((err = snd_pcm_prepare(pcm)) < 0)
		die("prepare", err);
	if (play(pcm, &snd, snd.frames) != (snd_pcm_sframes_t)snd.frames)
		die("writei (short)", -EIO);
	err = snd_pcm_delay(pcm, &d);
	check("short_not_started", err == 0 && d == (snd_pcm_sframes_t)snd.frames &&
					   snd_pcm_state(pcm) == SND_PCM_STATE_PREPARED,
	      "delay=%ld state=%s", (long)d, snd_pcm_state_name(snd_pcm_state(pcm)));
	t0 = now_ms();
	err = snd_pcm_drain(pcm);
	t = now_ms() - t0;
	check("short_drain", err == 0 && t >= snd.frames * 1000.0 / RATE - 5 && t < 1500, "ret=%d elapsed_ms=%.3f", err,
	      t);
	printf("written %lu\n", (unsigned long)snd.pos);
	snd_pcm_close(pcm);
}

/* The daemon stalls (SIGSTOP for 60 ms, less than our 85 ms buffer): nothing is consumed, so
 * the delay must not sink below the frames still in our buffer, and the client must not xrun. */
static void cmd_stall(const char *path, int daemon_pid)
{
	struct sound snd = load(path);
	snd_pcm_t *pcm = open_pcm(0);
	snd_pcm_sframes_t d, a, d_min = 1 << 30, fill_at_min = 0;
	int err, samples = 0, below = 0;
	double t0;

	setup(pcm, 0);
	play_until_ms(pcm, &snd, 400); /* started at a full buffer, then 300 ms of steady play */
	if (kill(daemon_pid, SIGSTOP) < 0)
		die("kill SIGSTOP", -errno);
	t0 = now_ms();
	while (now_ms() - t0 < 60) {
		/* delay first, then avail: the fill can only shrink in between. */
		if ((err = snd_pcm_delay(pcm, &d)) < 0 || (a = snd_pcm_avail(pcm)) < 0) {
			kill(daemon_pid, SIGCONT);
			die("delay/avail during the stall", err < 0 ? err : (int)a);
		}
		samples++;
		if (d < (snd_pcm_sframes_t)buffer_frames - a)
			below++;
		if (d < d_min) {
			d_min = d;
			fill_at_min = buffer_frames - a;
		}
		sleep_ms(5);
	}
	kill(daemon_pid, SIGCONT);
	check("stall_delay_holds", below == 0 && samples >= 5, "samples=%d below_fill=%d min_delay=%ld fill_then=%ld",
	      samples, below, (long)d_min, (long)fill_at_min);
	value("stall_min_delay_frames", d_min);
	play_until_ms(pcm, &snd, 1e9);
	err = snd_pcm_drain(pcm);
	check("stall_drain", err == 0, "ret=%d", err);
	printf("written %lu\n", (unsigned long)snd.pos);
	snd_pcm_close(pcm);
}

static snd_pcm_t *abort_pcm;
static void on_alarm(int sig)
{
	(void)sig;
	snd_pcm_abort(abort_pcm);
}

/* A blocking drain of 0.5 s aborted after 150 ms from a signal handler (snd_pcm_abort) returns
 * soon with -EAGAIN. */
static void cmd_abort(const char *path)
{
	struct sound snd = load(path);
	snd_pcm_t *pcm = open_pcm(0);
	struct sigaction sa;
	struct itimerval it = { { 0, 0 }, { 0, 150000 } };
	snd_pcm_sframes_t delay = 0;
	int err;
	double t0, t;

	setup_sized(pcm, 24000, 6000, 0);
	play_until_ms(pcm, &snd, 1e9);
	abort_pcm = pcm;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_alarm;
	sa.sa_flags = SA_RESTART;
	sigaction(SIGALRM, &sa, NULL);
	snd_pcm_delay(pcm, &delay);
	t0 = now_ms();
	setitimer(ITIMER_REAL, &it, NULL);
	err = snd_pcm_drain(pcm);
	t = now_ms() - t0;
	check("abort_drain", err == -EAGAIN && t >= 140 && t < 400 && t + 50 < delay * 1000.0 / RATE,
	      "ret=%d elapsed_ms=%.3f queued_ms=%.3f", err, t, delay * 1000.0 / RATE);
	value("abort_drain_ms", t);
	err = snd_pcm_drop(pcm);
	check("drop_after_abort", err == 0, "ret=%d", err);
	snd_pcm_close(pcm);
}

static long long mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Delay against the truth: plays the whole sound (start at a full buffer, kept topped up) and
 * samples snd_pcm_delay every ~3 ms, printing
 *   sample <ns before> <ns after> <frames written> <delay>
 * The test relates each sample to the card's clock (its clock_file) and recording. */
static void cmd_truth(const char *path, snd_pcm_uframes_t period, snd_pcm_uframes_t buffer)
{
	struct sound snd = load(path);
	snd_pcm_t *pcm = open_pcm(0);
	snd_pcm_sframes_t d;
	int err, samples = 0;

	setup_sized(pcm, buffer, period, 0);
	while (snd.pos < snd.frames) {
		snd_pcm_sframes_t a = snd_pcm_avail(pcm);
		long long t0, t1;
		if (a < 0)
			die("avail", (int)a);
		if (a >= (snd_pcm_sframes_t)period && play(pcm, &snd, a) < 0)
			die("writei", -EIO);
		t0 = mono_ns();
		err = snd_pcm_delay(pcm, &d);
		t1 = mono_ns();
		if (err < 0)
			die("delay", err);
		if (snd_pcm_state(pcm) == SND_PCM_STATE_RUNNING) {
			printf("sample %lld %lld %lu %ld\n", t0, t1, (unsigned long)snd.pos, (long)d);
			samples++;
		}
		sleep_ms(3);
	}
	err = snd_pcm_drain(pcm);
	check("truth_drain", err == 0 && samples >= 100, "ret=%d samples=%d", err, samples);
	printf("written %lu\n", (unsigned long)snd.pos);
	snd_pcm_close(pcm);
}

static long rss_kb(void)
{
	long pages = 0, resident = 0;
	FILE *f = fopen("/proc/self/statm", "r");
	if (!f || fscanf(f, "%ld %ld", &pages, &resident) != 2)
		die("read /proc/self/statm", -EIO);
	fclose(f);
	return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

/* The application stops writing: the stream underruns. snd_pcm_status then says XRUN with a
 * trigger timestamp no older than the stream's start and a current timestamp after it, so the
 * underrun length programs compute (aplay: tstamp - trigger) is bounded by the time since the
 * start; never negative, never "years". After prepare and a restart the trigger is the restart. */
static void cmd_xrun_status(const char *path)
{
	struct sound snd = load(path);
	snd_pcm_t *pcm = open_pcm(0);
	snd_pcm_status_t *st;
	snd_htimestamp_t trig, tnow;
	double t_open = now_ms(), t_stop, dur, since_start, since_stop, trig_ms;
	int err;

	setup(pcm, 0);
	play_until_ms(pcm, &snd, 300);
	t_stop = now_ms();
	sleep_ms(400);
	snd_pcm_status_alloca(&st);
	if ((err = snd_pcm_status(pcm, st)) < 0)
		die("status", err);
	snd_pcm_status_get_trigger_htstamp(st, &trig);
	snd_pcm_status_get_htstamp(st, &tnow);
	dur = ts_ms(tnow) - ts_ms(trig);
	since_start = now_ms() - t_open;
	since_stop = now_ms() - t_stop;
	check("xrun_status", snd_pcm_status_get_state(st) == SND_PCM_STATE_XRUN && dur >= 0 && dur <= since_start + 50,
	      "state=%s underrun_ms=%.3f since_open_ms=%.3f since_last_write_ms=%.3f",
	      snd_pcm_state_name(snd_pcm_status_get_state(st)), dur, since_start, since_stop);
	value("xrun_underrun_ms", dur);
	value("xrun_since_last_write_ms", since_stop);
	if ((err = snd_pcm_prepare(pcm)) < 0)
		die("prepare after xrun", err);
	play_until_ms(pcm, &snd, 700); /* starts again at a full buffer */
	if ((err = snd_pcm_status(pcm, st)) < 0)
		die("status", err);
	snd_pcm_status_get_trigger_htstamp(st, &trig);
	snd_pcm_status_get_htstamp(st, &tnow);
	trig_ms = ts_ms(tnow) - ts_ms(trig);
	check("restart_trigger", snd_pcm_status_get_state(st) == SND_PCM_STATE_RUNNING && trig_ms >= 0 &&
					 trig_ms < now_ms() - t_stop - 400 + 50,
	      "state=%s since_trigger_ms=%.3f", snd_pcm_state_name(snd_pcm_status_get_state(st)), trig_ms);
	snd_pcm_drop(pcm);
	snd_pcm_close(pcm);
}

/* The abort checks: the drain says -EAGAIN (aborted, not completed), after the abort came
 * (>= 140 ms), soon (< 400 ms), and at least 50 ms before the audio queued when it began could
 * have played out. (That the queue was over 400 ms was assumed before: 500 ms minus the time
 * between the last write and the delay call, which a loaded machine stretched past 100 ms.) */
static void *abort_after_150ms(void *arg)
{
	sleep_ms(150);
	snd_pcm_abort((snd_pcm_t *)arg);
	return NULL;
}

/* As `abort`, but snd_pcm_abort comes from another thread (no signal interrupts the drain's
 * wait): the drain must still return soon with -EAGAIN. */
static void cmd_abort_thread(const char *path)
{
	struct sound snd = load(path);
	snd_pcm_t *pcm = open_pcm(0);
	snd_pcm_sframes_t delay = 0;
	pthread_t th;
	int err;
	double t0, t;

	setup_sized(pcm, 24000, 6000, 0);
	play_until_ms(pcm, &snd, 1e9);
	snd_pcm_delay(pcm, &delay);
	t0 = now_ms();
	if (pthread_create(&th, NULL, abort_after_150ms, pcm) != 0)
		die("pthread_create", -EAGAIN);
	err = snd_pcm_drain(pcm);
	t = now_ms() - t0;
	pthread_join(th, NULL);
	check("abort_thread_drain", err == -EAGAIN && t >= 140 && t < 400 && t + 50 < delay * 1000.0 / RATE,
	      "ret=%d elapsed_ms=%.3f queued_ms=%.3f", err, t, delay * 1000.0 / RATE);
	value("abort_thread_drain_ms", t);
	err = snd_pcm_drop(pcm);
	check("drop_after_abort_thread", err == 0, "ret=%d", err);
	snd_pcm_close(pcm);
}

/* Open/setup/prepare/close `n` times: no fd or mapping may stay behind, and neither the heap in
 * use nor the resident size may grow after the first 100 cycles (caches warm). */
static void cmd_cycles(int n)
{
	int i, fds_first = 0, maps_first = 0, err;
	size_t heap_warm = 0;
	long rss_warm = 0;
	for (i = 0; i < n; i++) {
		if (i == 100 || (n <= 100 && i == 1)) {
			heap_warm = mallinfo2().uordblks;
			rss_warm = rss_kb();
		}
		snd_pcm_t *pcm = open_pcm(0);
		setup(pcm, 0);
		if ((err = snd_pcm_prepare(pcm)) < 0)
			die("prepare", err);
		if ((err = snd_pcm_close(pcm)) < 0)
			die("close", err);
		if (i == 0) {
			fds_first = count_fds();
			maps_first = count_memfd_maps();
		}
	}
	check("cycles_client_fds", count_fds() == fds_first && count_memfd_maps() == 0 && maps_first == 0,
	      "cycles=%d fds_after_first=%d fds_after_last=%d memfd_maps_first=%d memfd_maps_last=%d", n,
	      fds_first, count_fds(), maps_first, count_memfd_maps());
	{
		size_t heap = mallinfo2().uordblks;
		long rss = rss_kb();
		check("cycles_client_memory", heap <= heap_warm + 16384 && rss <= rss_warm + 512,
		      "heap_in_use_warm=%zu heap_in_use_last=%zu rss_kb_warm=%ld rss_kb_last=%ld", heap_warm, heap,
		      rss_warm, rss);
		value("cycles_heap_growth_bytes", (double)heap - (double)heap_warm);
		value("cycles_rss_growth_kb", rss - rss_warm);
	}
	snd_config_update_free_global();
}

/* Prints avail, delay and state right after a reset and checks them against hardware: nothing
 * queued (playback: avail == BUFFER, delay == 0; capture: avail and delay far below `before`). */
static void after_reset(snd_pcm_t *pcm, const char *name, snd_pcm_state_t want, snd_pcm_sframes_t before)
{
	snd_pcm_sframes_t a, d = -1;
	int err = snd_pcm_reset(pcm);
	if (err < 0)
		die("snd_pcm_reset", err);
	a = snd_pcm_avail(pcm);
	err = snd_pcm_delay(pcm, &d);
	if (before < 0)
		check(name, a == BUFFER && err == 0 && d == 0 && snd_pcm_state(pcm) == want,
		      "avail=%ld delay=%ld err=%d state=%s", (long)a, (long)d, err,
		      snd_pcm_state_name(snd_pcm_state(pcm)));
	else
		/* Capture: the unread frames are gone; what the device captured since (a daemon period
		 * or two while the daemon side restarts) may be there. */
		check(name, a >= 0 && a < before && a <= PERIOD && err == 0 && d >= 0 && d <= BUFFER &&
				    snd_pcm_state(pcm) == want,
		      "avail_before=%ld avail=%ld delay=%ld err=%d state=%s", (long)before, (long)a, (long)d, err,
		      snd_pcm_state_name(snd_pcm_state(pcm)));
	value("reset_avail", a);
	value("reset_delay", d);
}

/* snd_pcm_reset on playback, `running` (after 400 ms of play) or `prepared` (half a buffer
 * written, not started): what was queued is discarded, positions restart, and S2 written after
 * it plays completely and bit-exact. Prints how much of S1 was written before the reset. */
static void cmd_reset(const char *p1, const char *p2, int running)
{
	struct sound s1 = load(p1), s2 = load(p2);
	snd_pcm_t *pcm = open_pcm(0);
	snd_pcm_sframes_t a;
	int err;

	setup(pcm, 0);
	if (running) {
		play_until_ms(pcm, &s1, 400);
		a = snd_pcm_avail(pcm);
		printf("fill_before_reset %ld\n", (long)(BUFFER - a));
		after_reset(pcm, "reset_running", SND_PCM_STATE_RUNNING, -1);
	} else {
		if ((a = play(pcm, &s1, BUFFER / 2)) != BUFFER / 2)
			die("write half a buffer", (int)a);
		after_reset(pcm, "reset_prepared", SND_PCM_STATE_PREPARED, -1);
	}
	printf("written1 %lu\n", (unsigned long)s1.pos);
	/* A second reset right away has nothing to discard. */
	if ((err = snd_pcm_reset(pcm)) < 0)
		die("second snd_pcm_reset", err);
	a = snd_pcm_avail(pcm);
	check("reset_again", a == BUFFER, "avail=%ld", (long)a);
	play_until_ms(pcm, &s2, 1e9);
	err = snd_pcm_drain(pcm);
	check("reset_drain", err == 0, "ret=%d", err);
	printf("written2 %lu\n", (unsigned long)s2.pos);
	snd_pcm_close(pcm);
}

/* Reads `ms` of capture into `f`, a period at a time. */
static void capture_ms(snd_pcm_t *pcm, FILE *f, double ms)
{
	int16_t buf[PERIOD * CHANNELS];
	snd_pcm_uframes_t got = 0;
	while (got < (snd_pcm_uframes_t)(ms * RATE / 1000)) {
		snd_pcm_sframes_t r = snd_pcm_readi(pcm, buf, PERIOD);
		if (r < 0)
			die("snd_pcm_readi", (int)r);
		fwrite(buf, 2 * CHANNELS, r, f);
		got += r;
	}
}

/* snd_pcm_reset on a running capture stream: the unread frames are discarded (never read
 * afterwards), reading goes on. PRE_OUT gets what was read before, POST_OUT after. */
static void cmd_reset_capture(const char *pre, const char *post)
{
	snd_pcm_t *pcm;
	snd_pcm_sframes_t a;
	FILE *f1 = fopen(pre, "wb"), *f2 = fopen(post, "wb");
	int err = snd_pcm_open(&pcm, "shmix", SND_PCM_STREAM_CAPTURE, 0);
	if (err < 0)
		die("snd_pcm_open shmix capture", err);
	if (!f1 || !f2)
		die("open output files", -errno);
	setup(pcm, 1);
	if ((err = snd_pcm_start(pcm)) < 0)
		die("snd_pcm_start", err);
	capture_ms(pcm, f1, 300);
	/* Let about 60 ms (2880 frames, under the 4096-frame buffer) pile up unread. */
	sleep_ms(60);
	a = snd_pcm_avail(pcm);
	printf("unread_before_reset %ld\n", (long)a);
	after_reset(pcm, "reset_capture", SND_PCM_STATE_RUNNING, a);
	capture_ms(pcm, f2, 300);
	fclose(f1);
	fclose(f2);
	snd_pcm_drop(pcm);
	snd_pcm_close(pcm);
}

/* A child forked while the stream plays tries to write to its copy of the PCM, closes it and
 * exits (a shell-out, a crash handler). The parent's stream must not notice: the child's calls
 * fail without touching it, and the parent plays the whole sound and drains. */
static void cmd_fork(const char *path)
{
	struct sound snd = load(path);
	snd_pcm_t *pcm = open_pcm(0);
	pid_t child;
	int st = 0;
	setup(pcm, 0);
	play_until_ms(pcm, &snd, 500);
	child = fork();
	if (child < 0)
		die("fork", -errno);
	if (child == 0) {
		/* No stdio here: the parent owns the buffered stdout. */
		snd_pcm_sframes_t w = snd_pcm_writei(pcm, snd.s, PERIOD);
		snd_pcm_close(pcm);
		_exit(w < 0 ? 0 : 3);
	}
	if (waitpid(child, &st, 0) != child)
		die("waitpid", -errno);
	check("fork_child_refused", WIFEXITED(st) && WEXITSTATUS(st) == 0, "child_status=%d", st);
	play_until_ms(pcm, &snd, 1e9);
	check("fork_drain", snd_pcm_drain(pcm) == 0, "written=%lu", (unsigned long)snd.pos);
	snd_pcm_close(pcm);
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc == 3 && !strcmp(argv[1], "basic")) {
		/* Its 1 s of delay sampling keeps the buffer topped up between 5 ms sleeps; with 4096
		 * frames the client itself underran once under load. */
		buffer_frames = 2 * BUFFER;
		cmd_basic(argv[2]);
	}
	else if (argc == 3 && !strcmp(argv[1], "pause"))
		cmd_pause(argv[2]);
	else if (argc == 4 && !strcmp(argv[1], "drop"))
		cmd_drop(argv[2], argv[3]);
	else if (argc == 3 && !strcmp(argv[1], "nonblock"))
		cmd_nonblock(argv[2]);
	else if (argc == 4 && !strcmp(argv[1], "stall")) {
		buffer_frames = 2 * BUFFER;
		cmd_stall(argv[2], atoi(argv[3]));
	}
	else if (argc == 3 && !strcmp(argv[1], "short"))
		cmd_short(argv[2]);
	else if (argc == 3 && !strcmp(argv[1], "abort"))
		cmd_abort(argv[2]);
	else if (argc == 3 && !strcmp(argv[1], "truth"))
		cmd_truth(argv[2], PERIOD, BUFFER);
	else if (argc == 3 && !strcmp(argv[1], "abort_thread"))
		cmd_abort_thread(argv[2]);
	else if (argc == 3 && !strcmp(argv[1], "xrun_status")) {
		/* 171 ms: it starts after 171 ms of the 300 it writes, then underruns on purpose. */
		buffer_frames = 2 * BUFFER;
		cmd_xrun_status(argv[2]);
	}
	else if (argc == 6 && !strcmp(argv[1], "truth")) {
		if (!strcmp(argv[5], "mmap"))
			access_mode = SND_PCM_ACCESS_MMAP_INTERLEAVED;
		cmd_truth(argv[2], atoi(argv[3]), atoi(argv[4]));
	}
	else if ((argc == 5 || argc == 6) && !strcmp(argv[1], "reset")) {
		if (argc == 6 && !strcmp(argv[5], "mmap"))
			access_mode = SND_PCM_ACCESS_MMAP_INTERLEAVED;
		cmd_reset(argv[2], argv[3], !strcmp(argv[4], "running"));
	}
	else if (argc == 4 && !strcmp(argv[1], "reset_capture"))
		cmd_reset_capture(argv[2], argv[3]);
	else if (argc == 3 && !strcmp(argv[1], "fork")) {
		buffer_frames = 2 * BUFFER;
		cmd_fork(argv[2]);
	}
	else if (argc == 3 && !strcmp(argv[1], "cycles"))
		cmd_cycles(atoi(argv[2]));
	else {
		fprintf(stderr, "usage: pcm_semantics basic|pause|nonblock|short|abort|abort_thread|truth|xrun_status SOUND | truth SOUND PERIOD BUFFER rw|mmap | drop S1 S2 | stall SOUND PID | cycles N | reset S1 S2 running|prepared [mmap] | reset_capture PRE POST | fork SOUND\n");
		return 2;
	}
	return failures ? 1 : 0;
}
