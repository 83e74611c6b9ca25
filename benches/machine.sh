#!/usr/bin/env bash
# What this machine allows a memory-mapped log, whatever hs does: the numbers
# README's "Performance (hs)" quotes for issue 16's limits.
#
#   benches/machine.sh            # about a minute; writes and removes ~4 GiB under $DIR
#   DIR=/somewhere benches/machine.sh
#
# It prints:
#   1. first touch of 1 GiB of anonymous memory, 4 KiB pages and huge pages
#      (MADV_HUGEPAGE), on memory freed a moment before and after a 6 s pause
#      (a VM that reports free memory to its host gets it back cold);
#   2. a 64 MiB file in $DIR written as a segment is: fallocate, then
#      MADV_POPULATE_WRITE and a copy through the mapping (hs's way), with
#      MADV_HUGEPAGE before the populate, or pwrite alone (medians of 8);
#   3. the disk's write rate (dd oflag=direct, 3 GiB) and the kernel's dirty
#      page limits, past which writers are throttled;
#   4. the kernel's preemption model, tick rate and free page reporting.
# Needs a C compiler (scripts/setup.sh installs one).
set -euo pipefail

DIR=${DIR:-${TMPDIR:-/tmp}}
work=$(mktemp -d "$DIR/hs-machine.XXXXXX")
trap 'rm -rf "$work"' EXIT

cat >"$work/probe.c" <<'EOF'
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

/* First touch of 1 GiB of anonymous memory, in GB/s. */
static double anon(int huge) {
  size_t sz = 1UL << 30;
  char *m = mmap(0, sz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) { perror("mmap"); exit(1); }
  if (huge) madvise(m, sz, MADV_HUGEPAGE);
  double t0 = now();
  memset(m, 1, sz);
  double gbs = sz / (now() - t0) / 1e9;
  munmap(m, sz);
  return gbs;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* A 64 MiB segment-like file: mode 0 populate + copy, 1 huge + populate +
   copy, 2 pwrite 256 KiB at a time. Median ms of 8. */
static double file(const char *dir, int mode) {
  size_t sz = 64UL << 20, chunk = 256UL << 10;
  static char *src;
  if (!src) { src = malloc(sz); memset(src, 7, sz); }
  double ms[8];
  for (int i = 0; i < 8; i++) {
    char name[4096];
    snprintf(name, sizeof name, "%s/seg%d", dir, i);
    double t0 = now();
    int fd = open(name, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || posix_fallocate(fd, 0, sz) != 0) { perror(name); exit(1); }
    char *m = mmap(0, sz, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) { perror("mmap"); exit(1); }
    if (mode == 2) {
      for (size_t o = 0; o < sz; o += chunk)
        if (pwrite(fd, src + o, chunk, o) != (ssize_t)chunk) { perror("pwrite"); exit(1); }
    } else {
      if (mode == 1) madvise(m, sz, MADV_HUGEPAGE);
      madvise(m, sz, MADV_POPULATE_WRITE);
      memcpy(m, src, sz);
    }
    ms[i] = (now() - t0) * 1e3;
    munmap(m, sz);
    close(fd);
    unlink(name);
  }
  qsort(ms, 8, sizeof ms[0], cmp);
  return ms[4];
}

int main(int argc, char **argv) {
  /* One call a statement: the order of a printf's arguments is unspecified. */
  double small = anon(0), small_again = anon(0);
  printf("1 GiB anonymous first touch, 4 KiB pages: %.2f GB/s, again at once: %.2f\n", small, small_again);
  double huge = anon(1), huge_again = anon(1);
  printf("1 GiB anonymous first touch, huge pages:  %.2f GB/s, again at once: %.2f\n", huge, huge_again);
  sleep(6);
  printf("after a 6 s pause, huge pages:            %.2f GB/s\n", anon(1));
  printf("64 MiB file, fallocate + populate + copy:         %.1f ms\n", file(argv[1], 0));
  printf("64 MiB file, fallocate + huge + populate + copy:  %.1f ms\n", file(argv[1], 1));
  printf("64 MiB file, fallocate + pwrite:                  %.1f ms\n", file(argv[1], 2));
  return 0;
}
EOF
cc -O2 -o "$work/probe" "$work/probe.c"
"$work/probe" "$work"

echo "disk, dd oflag=direct of 3 GiB into $DIR:"
dd if=/dev/zero of="$work/dd.bin" bs=1M count=3072 oflag=direct 2>&1 | tail -n 1
rm -f "$work/dd.bin"
page=$(getconf PAGESIZE)
awk -v p="$page" '/^nr_dirty_threshold / {printf "dirty pages that throttle writers: %.1f GiB\n", $2*p/2^30}
                  /^nr_dirty_background_threshold / {printf "dirty pages that start writeback: %.1f GiB\n", $2*p/2^30}' /proc/vmstat
echo "kernel: $(uname -r), $(uname -v | grep -o 'PREEMPT[A-Z_]*' | head -n 1)"
cfg=$(zcat /proc/config.gz 2>/dev/null || cat "/boot/config-$(uname -r)" 2>/dev/null || true)
# With PREEMPT_DYNAMIC, the CONFIG_PREEMPT_* choice is the default mode.
echo "$cfg" | grep -E '^CONFIG_(PREEMPT_NONE|PREEMPT_VOLUNTARY|PREEMPT|HZ)=' || echo "(kernel config not readable)"
grep -o 'page_reporting[^ ]*' /proc/cmdline || echo "no page_reporting option on the kernel command line"
