/* Duplex through shmix (issue 4): one program opens playback and capture on the same PCM at once,
 * runs a read-one-period / write-one-period loop, plays a single click and finds it in what it
 * captures. With the virtual card looping its playback back into capture (vcard `loopback true`),
 * that is the round trip: application -> plugin -> daemon -> card -> daemon -> plugin ->
 * application.
 *
 * Usage: duplex DEVICE PERIOD_FRAMES SECONDS
 * Prints `key value` lines: `cycles`, `xruns`, `click_played_frame`, `click_captured_frame`,
 * `start_offset_us`, `latency_frames`, `latency_ms` (absent when the click was not found), and
 * `duplex ok` at the end when every call worked.
 *
 * Latency: both streams count frames from their own start; the capture started `start_offset_us`
 * before the playback, so the click played at playback frame P and captured at capture frame C
 * took (C - P) / rate - start_offset seconds from being written by the application (at the fill
 * the loop keeps: the prefill) to being read back.
 */
#include <alsa/asoundlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define RATE 48000
#define CHANNELS 2
#define CLICK 20000

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

#define CHECK(what, call)                                                        \
    do {                                                                         \
        int err_ = (call);                                                       \
        if (err_ < 0) {                                                          \
            fprintf(stderr, "%s failed: %s\n", what, snd_strerror(err_));        \
            return 1;                                                            \
        }                                                                        \
    } while (0)

static int setup(snd_pcm_t *pcm, snd_pcm_uframes_t period, snd_pcm_uframes_t buffer, int is_playback) {
    snd_pcm_hw_params_t *hw;
    snd_pcm_sw_params_t *sw;
    snd_pcm_hw_params_alloca(&hw);
    snd_pcm_sw_params_alloca(&sw);
    CHECK("hw_params_any", snd_pcm_hw_params_any(pcm, hw));
    CHECK("set_access", snd_pcm_hw_params_set_access(pcm, hw, SND_PCM_ACCESS_RW_INTERLEAVED));
    CHECK("set_format", snd_pcm_hw_params_set_format(pcm, hw, SND_PCM_FORMAT_S16_LE));
    CHECK("set_channels", snd_pcm_hw_params_set_channels(pcm, hw, CHANNELS));
    CHECK("set_rate", snd_pcm_hw_params_set_rate(pcm, hw, RATE, 0));
    CHECK("set_period_size", snd_pcm_hw_params_set_period_size_near(pcm, hw, &period, NULL));
    CHECK("set_buffer_size", snd_pcm_hw_params_set_buffer_size_near(pcm, hw, &buffer));
    CHECK("hw_params", snd_pcm_hw_params(pcm, hw));
    CHECK("sw_params_current", snd_pcm_sw_params_current(pcm, sw));
    /* Both started explicitly, playback after its prefill. */
    CHECK("set_start_threshold", snd_pcm_sw_params_set_start_threshold(pcm, sw, is_playback ? buffer : 1));
    CHECK("set_avail_min", snd_pcm_sw_params_set_avail_min(pcm, sw, period));
    CHECK("sw_params", snd_pcm_sw_params(pcm, sw));
    printf("%s_period %lu\n%s_buffer %lu\n", is_playback ? "playback" : "capture", period,
           is_playback ? "playback" : "capture", buffer);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s DEVICE PERIOD_FRAMES SECONDS\n", argv[0]);
        return 2;
    }
    const char *dev = argv[1];
    snd_pcm_uframes_t period = strtoul(argv[2], NULL, 10);
    double secs = atof(argv[3]);
    snd_pcm_t *play, *cap;
    CHECK("open playback", snd_pcm_open(&play, dev, SND_PCM_STREAM_PLAYBACK, 0));
    CHECK("open capture", snd_pcm_open(&cap, dev, SND_PCM_STREAM_CAPTURE, 0));
    if (setup(play, period, 4 * period, 1) || setup(cap, period, 4 * period, 0))
        return 1;
    snd_pcm_hw_params_t *hw;
    snd_pcm_hw_params_alloca(&hw);
    snd_pcm_hw_params_current(play, hw);
    snd_pcm_hw_params_get_period_size(hw, &period, NULL);

    short *buf = calloc(period * CHANNELS, sizeof(short));
    CHECK("prepare playback", snd_pcm_prepare(play));
    CHECK("prepare capture", snd_pcm_prepare(cap));
    /* Prefill three periods of silence: the loop keeps this fill (one read, one write). */
    long long played = 0;
    for (int i = 0; i < 3; i++) {
        snd_pcm_sframes_t n = snd_pcm_writei(play, buf, period);
        CHECK("prefill writei", (int)n);
        played += n;
    }
    long long t_cap = now_ns();
    CHECK("start capture", snd_pcm_start(cap));
    long long t_play = now_ns();
    CHECK("start playback", snd_pcm_start(play));

    long long click_at = RATE / 2; /* playback frame of the click: after 0.5 s */
    long long captured = 0, found = -1, t_written = 0, t_read = 0;
    long cycles = 0, xruns = 0;
    long long total = (long long)(secs * RATE);
    while (captured < total) {
        snd_pcm_sframes_t n = snd_pcm_readi(cap, buf, period);
        if (n < 0) {
            xruns++;
            fprintf(stderr, "capture: %s\n", snd_strerror((int)n));
            CHECK("capture recover", snd_pcm_recover(cap, (int)n, 0));
            CHECK("capture restart", snd_pcm_start(cap));
            continue;
        }
        for (snd_pcm_sframes_t i = 0; i < n && found < 0; i++) {
            if (abs(buf[i * CHANNELS]) > CLICK / 2 || abs(buf[i * CHANNELS + 1]) > CLICK / 2) {
                found = captured + i;
                t_read = now_ns();
            }
        }
        captured += n;
        /* Write as much as was read: silence, with the click at its frame. */
        memset(buf, 0, (size_t)n * CHANNELS * sizeof(short));
        if (click_at >= played && click_at < played + n) {
            buf[(click_at - played) * CHANNELS] = CLICK;
            buf[(click_at - played) * CHANNELS + 1] = CLICK;
        }
        snd_pcm_sframes_t w = snd_pcm_writei(play, buf, (snd_pcm_uframes_t)n);
        if (w < 0) {
            xruns++;
            fprintf(stderr, "playback: %s\n", snd_strerror((int)w));
            CHECK("playback recover", snd_pcm_recover(play, (int)w, 0));
            continue;
        }
        if (click_at >= played && click_at < played + w)
            t_written = now_ns();
        played += w;
        cycles++;
    }
    printf("cycles %ld\nxruns %ld\nclick_played_frame %lld\n", cycles, xruns, click_at);
    printf("start_offset_us %.1f\n", (double)(t_play - t_cap) / 1000.0);
    if (found >= 0) {
        double lat_s = (double)(found - click_at) / RATE + (double)(t_cap - t_play) / 1e9;
        printf("click_captured_frame %lld\nlatency_frames %.1f\nlatency_ms %.3f\n", found, lat_s * RATE,
               lat_s * 1000.0);
        /* What the application sees: from the writei holding the click to the readi returning it
         * (includes the three periods it keeps queued, at period resolution). */
        printf("app_latency_ms %.3f\n", (double)(t_read - t_written) / 1e6);
    }
    CHECK("drop playback", snd_pcm_drop(play));
    CHECK("drop capture", snd_pcm_drop(cap));
    CHECK("close playback", snd_pcm_close(play));
    CHECK("close capture", snd_pcm_close(cap));
    free(buf);
    printf("duplex ok\n");
    return 0;
}
