/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The progress bar:
 *
 *    42% [#########.............]  420.0/1000.0 MiB  123.4 MiB/s  ETA 0:05
 *
 * drawn with a carriage return and "erase to end of line" on stderr,
 * at most every 100 ms, sized to the terminal.  The rate is the
 * average since the start (bytes handled, including zero ranges that
 * cost nothing, which is what the ETA needs).  Any message printed
 * while the bar is up clears the line first (stub_before_message); the
 * next update draws it again.
 */

#include <config.h>

#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "files.h"
#include "nbdkit-stubs.h"
#include "nbdbackup.h"
#include "progress.h"

#define MIB (1024.0 * 1024.0)
#define INTERVAL 0.1                    /* seconds between redraws */

static bool enabled;
static bool drawn;                      /* the line holds a bar now */
static uint64_t total;
static uint64_t start_done;             /* done before progress_start */
static double start_time, last_draw;

static void
clear_line (void)
{
  if (drawn) {
    fputs ("\r\033[K", stderr);
    fflush (stderr);
    drawn = false;
  }
}

void
progress_start_from (uint64_t total_, uint64_t done, bool enabled_)
{
  enabled = enabled_;
  total = total_;
  start_done = done;
  start_time = monotonic_seconds ();
  last_draw = 0;
  if (enabled) {
    stub_before_message = clear_line;
    progress_update (done);
  }
}

void
progress_start (uint64_t total_, bool enabled_)
{
  progress_start_from (total_, 0, enabled_);
}

void
progress_set_total (uint64_t total_)
{
  total = total_;
}

static unsigned
terminal_columns (void)
{
  struct winsize ws;

  if (ioctl (STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
    return ws.ws_col;
  return 80;
}

static void
format_eta (char *buf, size_t len, double seconds)
{
  unsigned long s;

  if (!(seconds >= 0) || seconds > 359999) {
    snprintf (buf, len, "--:--");
    return;
  }
  s = (unsigned long) (seconds + 0.5);
  if (s >= 3600)
    snprintf (buf, len, "%lu:%02lu:%02lu", s / 3600, s / 60 % 60, s % 60);
  else
    snprintf (buf, len, "%lu:%02lu", s / 60, s % 60);
}

void
progress_update (uint64_t done)
{
  double now, elapsed, rate, fraction;
  char tail[128], eta[32];
  unsigned cols, width, filled, i;
  int percent;

  if (!enabled)
    return;
  now = monotonic_seconds ();
  if (drawn && now - last_draw < INTERVAL)
    return;
  last_draw = now;

  elapsed = now - start_time;
  if (done > total)
    done = total;
  rate = elapsed > 0 && done > start_done ? (done - start_done) / elapsed : 0;
  fraction = total > 0 ? (double) done / total : 1;
  percent = (int) (fraction * 100);
  if (rate > 0)
    format_eta (eta, sizeof eta, (total - done) / rate);
  else
    format_eta (eta, sizeof eta, -1);
  snprintf (tail, sizeof tail, "  %.1f/%.1f MiB  %.1f MiB/s  ETA %s",
            done / MIB, total / MIB, rate / MIB, eta);

  /* "100% [" + bar + "]" + tail, one column spare so that the
   * terminal never wraps.
   */
  cols = terminal_columns ();
  width = 0;
  if (cols > strlen (tail) + 8 + 10)
    width = cols - strlen (tail) - 8 - 1;
  if (width > 50)
    width = 50;

  fprintf (stderr, "\r%3d%%", percent);
  if (width > 0) {
    filled = (unsigned) (fraction * width);
    fputs (" [", stderr);
    for (i = 0; i < width; ++i)
      fputc (i < filled ? '#' : '.', stderr);
    fputc (']', stderr);
  }
  fputs (tail, stderr);
  fputs ("\033[K", stderr);
  fflush (stderr);
  drawn = true;
}

void
progress_end (void)
{
  if (!enabled)
    return;
  clear_line ();
  stub_before_message = NULL;
  enabled = false;
}
