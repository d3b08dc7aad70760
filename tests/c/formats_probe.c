/* formats_probe: asks the `shmix` PCM, through alsa-lib's public API, what tests/formats.rs
 * needs: the channel-map API (query, get, set) and hw_params with bad values. Built and run by
 * tests/formats.rs. Every check prints one machine-readable line
 *   check <name> ok|FAIL detail...
 * and facts print as
 *   query <i> <type> <map>     (type: FIXED, VAR, PAIRED; map: snd_pcm_chmap_print)
 *   get <map>
 * Exit 1 if any check failed, 2 on a setup error.
 *
 * Usage: formats_probe chmap CHANNELS [POS,POS,...]
 *        formats_probe params
 */
#include <alsa/asoundlib.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;

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

static snd_pcm_t *open_pcm(void)
{
	snd_pcm_t *pcm;
	int err = snd_pcm_open(&pcm, "shmix", SND_PCM_STREAM_PLAYBACK, 0);
	if (err < 0) {
		printf("error open: %s (%d)\n", snd_strerror(err), err);
		exit(2);
	}
	return pcm;
}

/* Full hw_params with the given values; returns the first error (0 when all applied). */
static int set_params(snd_pcm_t *pcm, snd_pcm_format_t format, unsigned int channels, unsigned int rate,
		      const char **stage)
{
	snd_pcm_hw_params_t *p;
	int err;
	snd_pcm_hw_params_alloca(&p);
	*stage = "any";
	if ((err = snd_pcm_hw_params_any(pcm, p)) < 0)
		return err;
	*stage = "access";
	if ((err = snd_pcm_hw_params_set_access(pcm, p, SND_PCM_ACCESS_RW_INTERLEAVED)) < 0)
		return err;
	*stage = "format";
	if ((err = snd_pcm_hw_params_set_format(pcm, p, format)) < 0)
		return err;
	*stage = "channels";
	if ((err = snd_pcm_hw_params_set_channels(pcm, p, channels)) < 0)
		return err;
	*stage = "rate";
	if ((err = snd_pcm_hw_params_set_rate(pcm, p, rate, 0)) < 0)
		return err;
	*stage = "hw_params";
	return snd_pcm_hw_params(pcm, p);
}

static void print_map(const char *what, const snd_pcm_chmap_t *map)
{
	char buf[512];
	if (snd_pcm_chmap_print(map, sizeof(buf), buf) < 0)
		strcpy(buf, "?");
	printf("%s %s\n", what, buf);
}

static int chmap(int argc, char **argv)
{
	unsigned int channels = (unsigned int)atoi(argv[2]);
	snd_pcm_t *pcm = open_pcm();
	snd_pcm_chmap_query_t **maps = snd_pcm_query_chmaps(pcm);
	int n = 0;
	int found_standard = 0;
	const char *stage;
	int err;

	check("query", maps != NULL, "snd_pcm_query_chmaps %s", maps ? "answered" : "returned NULL");
	for (; maps && maps[n]; n++) {
		char buf[512];
		if (snd_pcm_chmap_print(&maps[n]->map, sizeof(buf), buf) < 0)
			strcpy(buf, "?");
		if (maps[n]->map.channels <= 8)
			printf("query %d %s %s\n", n, snd_pcm_chmap_type_name(maps[n]->type), buf);
		if (maps[n]->map.channels == channels)
			found_standard = 1;
	}
	check("query_has_channels", found_standard, "a map of %u channels among %d", channels, n);
	if (maps)
		snd_pcm_free_chmaps(maps);

	err = set_params(pcm, SND_PCM_FORMAT_S16_LE, channels, 48000, &stage);
	if (err < 0) {
		printf("error %s: %s (%d)\n", stage, snd_strerror(err), err);
		return 2;
	}
	snd_pcm_chmap_t *got = snd_pcm_get_chmap(pcm);
	check("get", got != NULL && got->channels == channels, "channels %u", got ? got->channels : 0);
	if (got) {
		print_map("get", got);
		free(got);
	}
	if (argc > 3) {
		snd_pcm_chmap_t *want = snd_pcm_chmap_parse_string(argv[3]);
		if (!want) {
			printf("error parse %s\n", argv[3]);
			return 2;
		}
		err = snd_pcm_set_chmap(pcm, want);
		check("set", err == 0, "snd_pcm_set_chmap(%s) = %d (%s)", argv[3], err, err ? snd_strerror(err) : "");
		got = snd_pcm_get_chmap(pcm);
		int same = got && got->channels == want->channels &&
			   memcmp(got->pos, want->pos, want->channels * sizeof(want->pos[0])) == 0;
		check("get_after_set", same, "");
		if (got) {
			print_map("get", got);
			free(got);
		}
		/* A map of the wrong length is refused. */
		snd_pcm_chmap_t *bad = snd_pcm_chmap_parse_string(channels == 1 ? "FL,FR" : "FL");
		err = snd_pcm_set_chmap(pcm, bad);
		check("set_wrong_length_refused", err < 0, "= %d", err);
		free(bad);
		free(want);
	}
	snd_pcm_close(pcm);
	return failures ? 1 : 0;
}

struct attempt {
	const char *name;
	snd_pcm_format_t format;
	unsigned int channels, rate;
	int want_ok;
};

static int params(void)
{
	static const struct attempt tries[] = {
		{ "channels_0_refused", SND_PCM_FORMAT_S16_LE, 0, 48000, 0 },
		{ "channels_33_refused", SND_PCM_FORMAT_S16_LE, 33, 48000, 0 },
		{ "rate_0_refused", SND_PCM_FORMAT_S16_LE, 2, 0, 0 },
		{ "rate_7999_refused", SND_PCM_FORMAT_S16_LE, 2, 7999, 0 },
		{ "rate_384001_refused", SND_PCM_FORMAT_S16_LE, 2, 384001, 0 },
		{ "format_S20_3LE_refused", SND_PCM_FORMAT_S20_3LE, 2, 48000, 0 },
		{ "format_IMA_ADPCM_refused", SND_PCM_FORMAT_IMA_ADPCM, 2, 48000, 0 },
		{ "channels_1_accepted", SND_PCM_FORMAT_S16_LE, 1, 48000, 1 },
		{ "channels_32_accepted", SND_PCM_FORMAT_S16_LE, 32, 48000, 1 },
		{ "rate_8000_accepted", SND_PCM_FORMAT_S16_LE, 2, 8000, 1 },
		{ "rate_384000_accepted", SND_PCM_FORMAT_S16_LE, 2, 384000, 1 },
		{ "rate_11025_accepted", SND_PCM_FORMAT_S16_LE, 2, 11025, 1 },
		{ "format_U8_accepted", SND_PCM_FORMAT_U8, 2, 48000, 1 },
		{ "format_S16_BE_accepted", SND_PCM_FORMAT_S16_BE, 2, 48000, 1 },
		{ "format_S24_LE_accepted", SND_PCM_FORMAT_S24_LE, 2, 48000, 1 },
		{ "format_S24_BE_accepted", SND_PCM_FORMAT_S24_BE, 2, 48000, 1 },
		{ "format_S24_3LE_accepted", SND_PCM_FORMAT_S24_3LE, 2, 48000, 1 },
		{ "format_S24_3BE_accepted", SND_PCM_FORMAT_S24_3BE, 2, 48000, 1 },
		{ "format_S32_LE_accepted", SND_PCM_FORMAT_S32_LE, 2, 48000, 1 },
		{ "format_S32_BE_accepted", SND_PCM_FORMAT_S32_BE, 2, 48000, 1 },
		{ "format_FLOAT_LE_accepted", SND_PCM_FORMAT_FLOAT_LE, 2, 48000, 1 },
		{ "format_FLOAT_BE_accepted", SND_PCM_FORMAT_FLOAT_BE, 2, 48000, 1 },
		{ "format_FLOAT64_LE_accepted", SND_PCM_FORMAT_FLOAT64_LE, 2, 48000, 1 },
		{ "format_A_LAW_accepted", SND_PCM_FORMAT_A_LAW, 2, 48000, 1 },
		{ "format_MU_LAW_accepted", SND_PCM_FORMAT_MU_LAW, 2, 48000, 1 },
	};
	for (size_t i = 0; i < sizeof(tries) / sizeof(tries[0]); i++) {
		const struct attempt *t = &tries[i];
		snd_pcm_t *pcm = open_pcm();
		const char *stage;
		int err = set_params(pcm, t->format, t->channels, t->rate, &stage);
		if (err == 0)
			check(t->name, t->want_ok, "accepted");
		else
			check(t->name, !t->want_ok, "refused at %s: %s (%d)", stage, snd_strerror(err), err);
		snd_pcm_close(pcm);
	}
	/* After all that, the same program still plays. */
	snd_pcm_t *pcm = open_pcm();
	const char *stage;
	int err = set_params(pcm, SND_PCM_FORMAT_S16_LE, 2, 48000, &stage);
	if (err == 0) {
		static short buf[4800 * 2];
		for (int i = 0; i < 4800; i++)
			buf[2 * i] = buf[2 * i + 1] = (short)((i % 48) * 500 - 12000);
		snd_pcm_sframes_t w = snd_pcm_writei(pcm, buf, 4800);
		err = w == 4800 ? snd_pcm_drain(pcm) : (int)w;
	}
	check("plays_afterwards", err == 0, "%s", err == 0 ? "" : snd_strerror(err));
	snd_pcm_close(pcm);
	return failures ? 1 : 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc >= 3 && strcmp(argv[1], "chmap") == 0)
		return chmap(argc, argv);
	if (argc == 2 && strcmp(argv[1], "params") == 0)
		return params();
	fprintf(stderr, "usage: formats_probe chmap CHANNELS [MAP] | params\n");
	return 2;
}
