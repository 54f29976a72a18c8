/* msgpack subset for the native launcher (see mpack.h). */
#include "mpack.h"

#include <stdlib.h>
#include <string.h>

static void put(struct mp_buf *b, const void *d, size_t n)
{
    if (b->err || b->len + n > b->cap) {
        b->err = 1;
        return;
    }
    memcpy(b->p + b->len, d, n);
    b->len += n;
}

static void put_be(struct mp_buf *b, unsigned char tag, uint64_t v, int bytes)
{
    unsigned char t[9];
    t[0] = tag;
    for (int i = 0; i < bytes; i++)
        t[1 + i] = (unsigned char)(v >> (8 * (bytes - 1 - i)));
    put(b, t, 1 + bytes);
}

void mp_map(struct mp_buf *b, uint32_t n)
{
    if (n < 16) {
        unsigned char t = 0x80 | n;
        put(b, &t, 1);
    } else if (n < 65536) {
        put_be(b, 0xde, n, 2);
    } else {
        put_be(b, 0xdf, n, 4);
    }
}

void mp_arr(struct mp_buf *b, uint32_t n)
{
    if (n < 16) {
        unsigned char t = 0x90 | n;
        put(b, &t, 1);
    } else if (n < 65536) {
        put_be(b, 0xdc, n, 2);
    } else {
        put_be(b, 0xdd, n, 4);
    }
}

void mp_strn(struct mp_buf *b, const char *s, size_t n)
{
    if (n < 32) {
        unsigned char t = 0xa0 | n;
        put(b, &t, 1);
    } else if (n < 256) {
        put_be(b, 0xd9, n, 1);
    } else if (n < 65536) {
        put_be(b, 0xda, n, 2);
    } else {
        put_be(b, 0xdb, n, 4);
    }
    put(b, s, n);
}

void mp_bin(struct mp_buf *b, const void *d, size_t n)
{
    if (n < 256)
        put_be(b, 0xc4, n, 1);
    else if (n < 65536)
        put_be(b, 0xc5, n, 2);
    else
        put_be(b, 0xc6, n, 4);
    put(b, d, n);
}

void mp_str(struct mp_buf *b, const char *s)
{
    mp_strn(b, s, strlen(s));
}

void mp_int(struct mp_buf *b, int64_t v)
{
    if (v >= 0 && v < 128) {
        unsigned char t = (unsigned char)v;
        put(b, &t, 1);
    } else {
        put_be(b, 0xd3, (uint64_t)v, 8);
    }
}

void mp_bool(struct mp_buf *b, int v)
{
    unsigned char t = v ? 0xc3 : 0xc2;
    put(b, &t, 1);
}

/* -- reading ---------------------------------------------------------------- */
struct rd {
    const unsigned char *p, *end;
    int depth;
};

static int need(struct rd *r, size_t n)
{
    return (size_t)(r->end - r->p) >= n;
}

static uint64_t be(struct rd *r, int bytes)
{
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++)
        v = (v << 8) | r->p[i];
    r->p += bytes;
    return v;
}

static int parse(struct rd *r, struct mp_node *out);

static int parse_items(struct rd *r, struct mp_node *out, enum mp_type t, uint64_t n)
{
    uint64_t count = t == MP_MAP ? 2 * n : n;
    /* Every item takes at least one byte: a count beyond the frame is malformed. */
    if (count > (uint64_t)(r->end - r->p) || r->depth > 32)
        return -1;
    out->type = t;
    out->len = (uint32_t)n;
    out->items = calloc(count ? count : 1, sizeof(struct mp_node));
    if (!out->items)
        return -1;
    r->depth++;
    for (uint64_t i = 0; i < count; i++)
        if (parse(r, &out->items[i]) < 0)
            return -1;
    r->depth--;
    return 0;
}

static int parse_bytes(struct rd *r, struct mp_node *out, enum mp_type t, uint64_t n)
{
    if (!need(r, n))
        return -1;
    out->type = t;
    out->s = (const char *)r->p;
    out->len = (uint32_t)n;
    r->p += n;
    return 0;
}

static int parse(struct rd *r, struct mp_node *out)
{
    static const int width[] = {1, 2, 4, 8};
    if (!need(r, 1))
        return -1;
    unsigned char c = *r->p++;
    memset(out, 0, sizeof(*out));
    if (c <= 0x7f) {
        out->type = MP_INT;
        out->i = c;
        return 0;
    }
    if (c >= 0xe0) {
        out->type = MP_INT;
        out->i = (int8_t)c;
        return 0;
    }
    if ((c & 0xf0) == 0x80)
        return parse_items(r, out, MP_MAP, c & 0x0f);
    if ((c & 0xf0) == 0x90)
        return parse_items(r, out, MP_ARR, c & 0x0f);
    if ((c & 0xe0) == 0xa0)
        return parse_bytes(r, out, MP_STR, c & 0x1f);
    switch (c) {
    case 0xc0:
        out->type = MP_NIL;
        return 0;
    case 0xc2:
    case 0xc3:
        out->type = MP_BOOL;
        out->i = c == 0xc3;
        return 0;
    case 0xc4: case 0xc5: case 0xc6: {
        int w = width[c - 0xc4];
        if (!need(r, w))
            return -1;
        return parse_bytes(r, out, MP_BIN, be(r, w));
    }
    case 0xd9: case 0xda: case 0xdb: {
        int w = width[c - 0xd9];
        if (!need(r, w))
            return -1;
        return parse_bytes(r, out, MP_STR, be(r, w));
    }
    case 0xcc: case 0xcd: case 0xce: case 0xcf: {
        int w = width[c - 0xcc];
        if (!need(r, w))
            return -1;
        out->type = MP_INT;
        out->i = (int64_t)be(r, w);
        return 0;
    }
    case 0xd0: case 0xd1: case 0xd2: case 0xd3: {
        int w = width[c - 0xd0];
        if (!need(r, w))
            return -1;
        uint64_t v = be(r, w);
        int shift = 64 - 8 * w;
        out->type = MP_INT;
        out->i = (int64_t)(v << shift) >> shift;    /* sign-extend */
        return 0;
    }
    case 0xca: case 0xcb: {         /* floats: skipped, never looked at */
        int w = c == 0xca ? 4 : 8;
        if (!need(r, w))
            return -1;
        r->p += w;
        out->type = MP_OTHER;
        return 0;
    }
    case 0xdc: case 0xdd: {
        int w = c == 0xdc ? 2 : 4;
        if (!need(r, w))
            return -1;
        return parse_items(r, out, MP_ARR, be(r, w));
    }
    case 0xde: case 0xdf: {
        int w = c == 0xde ? 2 : 4;
        if (!need(r, w))
            return -1;
        return parse_items(r, out, MP_MAP, be(r, w));
    }
    default:
        return -1;              /* ext types: corrald never sends them */
    }
}

struct mp_node *mp_parse(const unsigned char *data, size_t n)
{
    struct rd r = {data, data + n, 0};
    struct mp_node *out = calloc(1, sizeof(*out));
    if (!out || parse(&r, out) < 0)
        return NULL;
    return out;
}

const struct mp_node *mp_get(const struct mp_node *map, const char *key)
{
    size_t kl = strlen(key);
    if (!map || map->type != MP_MAP)
        return NULL;
    for (uint32_t i = 0; i < map->len; i++) {
        const struct mp_node *k = &map->items[2 * i];
        if (k->type == MP_STR && k->len == kl && memcmp(k->s, key, kl) == 0)
            return &map->items[2 * i + 1];
    }
    return NULL;
}

char *mp_cstr(const struct mp_node *n)
{
    if (!n || n->type != MP_STR)
        return NULL;
    char *s = malloc(n->len + 1);
    if (!s)
        return NULL;
    memcpy(s, n->s, n->len);
    s[n->len] = 0;
    return s;
}
