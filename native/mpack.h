/* The msgpack subset the native launcher speaks with corrald (protocol.py):
 * maps, arrays, strings, bin, integers, booleans and nil. Writing appends to
 * a fixed buffer (overflow is sticky: mp_buf.err); reading builds a tree of
 * nodes that point into the received frame. */
#ifndef CORRAL_MPACK_H
#define CORRAL_MPACK_H

#include <stddef.h>
#include <stdint.h>

struct mp_buf {
    unsigned char *p;
    size_t len, cap;
    int err;
};

void mp_map(struct mp_buf *b, uint32_t n);
void mp_arr(struct mp_buf *b, uint32_t n);
void mp_str(struct mp_buf *b, const char *s);
void mp_strn(struct mp_buf *b, const char *s, size_t n);
void mp_bin(struct mp_buf *b, const void *d, size_t n);
void mp_int(struct mp_buf *b, int64_t v);
void mp_bool(struct mp_buf *b, int v);

enum mp_type { MP_NIL, MP_BOOL, MP_INT, MP_STR, MP_BIN, MP_ARR, MP_MAP, MP_OTHER };

struct mp_node {
    enum mp_type type;
    int64_t i;                  /* MP_INT, MP_BOOL */
    const char *s;              /* MP_STR, MP_BIN: not NUL-terminated */
    uint32_t len;               /* MP_STR, MP_BIN: bytes; MP_ARR: items; MP_MAP: pairs */
    struct mp_node *items;      /* MP_ARR: len nodes; MP_MAP: 2*len (key, value) */
};

/* Parse one value from data[0..n); nodes are malloc'ed (never freed: the
 * launcher execs). Returns NULL on malformed input. */
struct mp_node *mp_parse(const unsigned char *data, size_t n);
/* The value of a string key in a map, or NULL. */
const struct mp_node *mp_get(const struct mp_node *map, const char *key);
/* A string node as a new NUL-terminated copy (NULL if not a string). */
char *mp_cstr(const struct mp_node *n);

#endif
