/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The write gate.  Every write-like request (pwrite, zero, trim)
 * passes through it once, in the outermost of the suite's filters on
 * its thread.  A transaction closes the gate: it waits until no write
 * is in flight and holds new writes back until it opens the gate
 * again, so every write is wholly before or wholly after every
 * snapshot and bitmap change, in every filter of the process.
 */

#ifndef NBDKIT_BACKUP_GATE_H
#define NBDKIT_BACKUP_GATE_H

#include <stdbool.h>

/* Enter the gate for a write (nested calls on one thread are free). */
extern void gate_enter (void);

/* Leave it (the outermost leave lets a waiting transaction in). */
extern void gate_leave (void);

/* Close the gate: returns once no write is in flight.  Must not be
 * called by a thread inside the gate.  A closed gate belongs to no
 * thread: any thread may open it (a group transaction opens it on
 * another thread than the one that closed it).
 */
extern void gate_close (void);

/* Open it again. */
extern void gate_open (void);

/* Is the gate closed now (for status and tests)? */
extern bool gate_is_closed (void);

/* Writes currently inside the gate (for status and tests). */
extern unsigned gate_writes_in_flight (void);

/* Writes waiting for the gate to open (for status and tests). */
extern unsigned gate_writes_waiting (void);

/* Hold the gate for a write until the end of the current block. */
extern void gate_cleanup (int *unused);
#define GATE_FOR_CURRENT_SCOPE()                                        \
  __attribute__ ((cleanup (gate_cleanup))) int _gate                    \
    __attribute__ ((unused)) = (gate_enter (), 0)

#endif /* NBDKIT_BACKUP_GATE_H */
