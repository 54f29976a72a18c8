/* Maps pinned where the daemon says: it compiles with
 * -DCORRAL_PIN_DIR="\"/sys/fs/bpf/...\"", so a restarted daemon (bcc reuses a
 * pin it finds) shares the live state with the programs its predecessor left. */
#ifndef CORRAL_PINNED_H
#define CORRAL_PINNED_H

#ifndef CORRAL_PIN_DIR
#error "compile with -DCORRAL_PIN_DIR=\"<bpffs directory>\""
#endif
#define PIN(_name) CORRAL_PIN_DIR "/" #_name

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
