/* Latency client for bench/compare: what a player asking for a given period and buffer gets from a
 * sound server's ALSA plugin, and what delay the plugin reports while it plays.
 *
 * Usage: latency_client PCM PERIOD_FRAMES BUFFER_FRAMES SECONDS
 *
 * Opens PCM for playback in blocking mode, S16_LE 48 kHz stereo, interleaved read/write access;
 * asks for PERIOD_FRAMES then BUFFER_FRAMES (the _near setters, in that order, as aplay does) and
 * reports what was granted. Software parameters as a player sets them (and as aplay's defaults):
 * start when the buffer is full, wake when a period fits. Plays SECONDS of a 1 kHz tone at -12 dBFS
 * with snd_pcm_writei, one period per call, and after each write calls snd_pcm_delay: the
 * samples taken while the PCM is RUNNING give mean/min/max. At the end it takes one more
 * snd_pcm_delay (`delay_before_drain_ms`), then times snd_pcm_drain (CLOCK_MONOTONIC): an honest
 * delay report and the drain time should agree.
 *
 * xruns: -EPIPE from snd_pcm_writei or snd_pcm_delay (then snd_pcm_prepare and go on) plus
 * -ESTRPIPE (resume or prepare). Other snd_pcm_delay errors are counted (`delay_errors`, the first
 * one's text in `first_delay_error`) and that write has no delay sample.
 *
 * Prints one JSON line on stdout; errors go to stderr with exit code 1.
 */
#include <alsa/asoundlib.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define RATE 48000
#define CHANNELS 2
/* 1 kHz at 48 kHz: 48 samples a cycle, so one table of a cycle plays it exactly;
 * round(8209 * sin(2 pi k / 48)), 8209 = -12 dBFS. */
#define TONE_FRAMES 48

static const short tone[TONE_FRAMES] = {
    0, 1071, 2125, 3141, 4104, 4997, 5805, 6513, 7109, 7584, 7929, 8139,
    8209, 8139, 7929, 7584, 7109, 6513, 5805, 4997, 4104, 3141, 2125, 1071,
    0, -1071, -2125, -3141, -4104, -4997, -5805, -6513, -7109, -7584, -7929, -8139,
    -8209, -8139, -7929, -7584, -7109, -6513, -5805, -4997, -4105, -3141, -2125, -1071,
};

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

#define CHECK(what, call)                                                        \
    do {                                                                         \
        int err_ = (call);                                                       \
        if (err_ < 0) {                                                          \
            fprintf(stderr, "%s failed: %s\n", what, snd_strerror(err_));        \
            return 1;                                                            \
        }                                                                        \
    } while (0)

/* -EPIPE / -ESTRPIPE: count an xrun and make the PCM writable again. 0 when recovered. */
static int recover(snd_pcm_t *pcm, int err, long *xruns) {
    if (err == -EPIPE) {
        (*xruns)++;
        return snd_pcm_prepare(pcm);
    }
    if (err == -ESTRPIPE) {
        (*xruns)++;
        while ((err = snd_pcm_resume(pcm)) == -EAGAIN)
            sleep(1);
        return err < 0 ? snd_pcm_prepare(pcm) : 0;
    }
    return err;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s PCM PERIOD_FRAMES BUFFER_FRAMES SECONDS\n", argv[0]);
        return 2;
    }
    const char *name = argv[1];
    snd_pcm_uframes_t req_period = strtoul(argv[2], NULL, 10);
    snd_pcm_uframes_t req_buffer = strtoul(argv[3], NULL, 10);
    double secs = strtod(argv[4], NULL);

    snd_pcm_t *pcm;
    CHECK("snd_pcm_open", snd_pcm_open(&pcm, name, SND_PCM_STREAM_PLAYBACK, 0));

    snd_pcm_hw_params_t *hw;
    snd_pcm_hw_params_alloca(&hw);
    CHECK("snd_pcm_hw_params_any", snd_pcm_hw_params_any(pcm, hw));
    CHECK("set_access", snd_pcm_hw_params_set_access(pcm, hw, SND_PCM_ACCESS_RW_INTERLEAVED));
    CHECK("set_format", snd_pcm_hw_params_set_format(pcm, hw, SND_PCM_FORMAT_S16_LE));
    CHECK("set_channels", snd_pcm_hw_params_set_channels(pcm, hw, CHANNELS));
    unsigned int rate = RATE;
    CHECK("set_rate_near", snd_pcm_hw_params_set_rate_near(pcm, hw, &rate, NULL));
    snd_pcm_uframes_t period = req_period;
    CHECK("set_period_size_near", snd_pcm_hw_params_set_period_size_near(pcm, hw, &period, NULL));
    snd_pcm_uframes_t buffer = req_buffer;
    CHECK("set_buffer_size_near", snd_pcm_hw_params_set_buffer_size_near(pcm, hw, &buffer));
    CHECK("snd_pcm_hw_params", snd_pcm_hw_params(pcm, hw));
    /* What stuck after hw_params (a plugin may refine on install). */
    CHECK("get_period_size", snd_pcm_hw_params_get_period_size(hw, &period, NULL));
    CHECK("get_buffer_size", snd_pcm_hw_params_get_buffer_size(hw, &buffer));
    CHECK("get_rate", snd_pcm_hw_params_get_rate(hw, &rate, NULL));

    snd_pcm_sw_params_t *sw;
    snd_pcm_sw_params_alloca(&sw);
    CHECK("snd_pcm_sw_params_current", snd_pcm_sw_params_current(pcm, sw));
    CHECK("set_start_threshold", snd_pcm_sw_params_set_start_threshold(pcm, sw, buffer));
    CHECK("set_avail_min", snd_pcm_sw_params_set_avail_min(pcm, sw, period));
    CHECK("snd_pcm_sw_params", snd_pcm_sw_params(pcm, sw));

    short *buf = malloc(period * CHANNELS * sizeof(short));
    if (!buf) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    long long total = (long long)(secs * rate);
    long long written = 0;
    unsigned phase = 0;
    long xruns = 0;
    long delay_errors = 0;
    int first_delay_error = 0;
    double sum_ms = 0, min_ms = 1e300, max_ms = 0;
    long samples = 0;
    double t_start = now_ms();

    while (written < total) {
        snd_pcm_uframes_t n = period;
        if ((long long)n > total - written)
            n = (snd_pcm_uframes_t)(total - written);
        for (snd_pcm_uframes_t i = 0; i < n; i++) {
            short s = tone[phase];
            phase = (phase + 1) % TONE_FRAMES;
            buf[i * 2] = s;
            buf[i * 2 + 1] = s;
        }
        snd_pcm_uframes_t off = 0;
        while (off < n) {
            snd_pcm_sframes_t w = snd_pcm_writei(pcm, buf + off * CHANNELS, n - off);
            if (w < 0) {
                CHECK("snd_pcm_writei", recover(pcm, (int)w, &xruns));
                continue;
            }
            off += (snd_pcm_uframes_t)w;
        }
        written += n;
        snd_pcm_sframes_t d;
        int err = snd_pcm_delay(pcm, &d);
        if (err == -EPIPE || err == -ESTRPIPE) {
            CHECK("snd_pcm_delay", recover(pcm, err, &xruns));
            continue;
        }
        if (err < 0) {
            /* A plugin that cannot say (pulse: -EIO until the server sent timing) is counted,
             * not fatal: a player goes on playing. */
            if (delay_errors++ == 0)
                first_delay_error = err;
            continue;
        }
        if (snd_pcm_state(pcm) == SND_PCM_STATE_RUNNING) {
            double ms = (double)d * 1e3 / rate;
            sum_ms += ms;
            if (ms < min_ms)
                min_ms = ms;
            if (ms > max_ms)
                max_ms = ms;
            samples++;
        }
    }

    snd_pcm_sframes_t d_end = 0;
    if (snd_pcm_delay(pcm, &d_end) < 0)
        d_end = -1;
    double t_drain0 = now_ms();
    int drain_err = snd_pcm_drain(pcm);
    double t_drain1 = now_ms();
    if (drain_err < 0)
        fprintf(stderr, "snd_pcm_drain: %s\n", snd_strerror(drain_err));
    snd_pcm_close(pcm);

    printf("{\"pcm\": \"%s\", \"rate\": %u, \"requested_period\": %lu, \"requested_buffer\": %lu, "
           "\"period\": %lu, \"buffer\": %lu, \"period_ms\": %.3f, \"buffer_ms\": %.3f, "
           "\"frames\": %lld, \"delay_samples\": %ld, \"delay_ms_mean\": %.3f, "
           "\"delay_ms_min\": %.3f, \"delay_ms_max\": %.3f, \"delay_before_drain_ms\": %.3f, "
           "\"drain_ms\": %.3f, \"drain_error\": %d, \"xruns\": %ld, \"delay_errors\": %ld, "
           "\"first_delay_error\": \"%s\", \"wall_s\": %.3f}\n",
           name, rate, (unsigned long)req_period, (unsigned long)req_buffer, (unsigned long)period,
           (unsigned long)buffer, period * 1e3 / rate, buffer * 1e3 / rate, written, samples,
           samples ? sum_ms / samples : -1.0, samples ? min_ms : -1.0, samples ? max_ms : -1.0,
           d_end >= 0 ? d_end * 1e3 / rate : -1.0, t_drain1 - t_drain0, drain_err, xruns,
           delay_errors, delay_errors ? snd_strerror(first_delay_error) : "",
           (t_drain1 - t_start) / 1e3);
    free(buf);
    return drain_err < 0 ? 1 : 0;
}
