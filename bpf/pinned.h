/* Maps pinned where the daemon says: it compiles with
 * -DCORRAL_PIN_DIR="\"/sys/fs/bpf/<instance>/net-<version>\"", so a restarted
 * daemon of the same build (bcc reuses a pin it finds) shares the live state
 * with the programs its predecessor left; a new build gets a new directory.
 * CORRAL_SHARED_PIN_DIR (the instance's directory) holds what every build
 * shares: the generation switch, which must be one map for all of them. */
#ifndef CORRAL_PINNED_H
#define CORRAL_PINNED_H

#ifndef CORRAL_PIN_DIR
#error "compile with -DCORRAL_PIN_DIR=\"<bpffs directory>\""
#endif
#ifndef CORRAL_SHARED_PIN_DIR
#error "compile with -DCORRAL_SHARED_PIN_DIR=\"<bpffs directory>\""
#endif
#define PIN(_name) CORRAL_PIN_DIR "/" #_name
#define SHARED_PIN(_name) CORRAL_SHARED_PIN_DIR "/" #_name

/* bcc 0.26 pins any map whose section is "maps/<type>:<path>" (that is all
 * BPF_TABLE_PINNED does), but BPF_RINGBUF_OUTPUT has no pinned form: this is
 * BPF_RINGBUF_OUTPUT with the pin path in its section. */
#define BPF_RINGBUF_PINNED(_name, _num_pages, _pinned) \
struct _name##_table_t { \
  int key; \
  u32 leaf; \
  int (*ringbuf_output) (void *, u64, u64); \
  void* (*ringbuf_reserve) (u64); \
  void (*ringbuf_discard) (void *, u64); \
  void (*ringbuf_submit) (void *, u64); \
  u32 max_entries; \
}; \
__attribute__((section("maps/ringbuf:" _pinned))) \
struct _name##_table_t _name = { .max_entries = ((_num_pages) * PAGE_SIZE) }

#endif
