/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* A test-only filter that registers itself and logs what the shared
 * registry holds, so a test can see that it and the suite's real
 * filters share one libnbdkit-backup instance.
 */

#include <config.h>

#include <stdio.h>
#include <stdlib.h>

#include <nbdkit-filter.h>

#include "registry.h"

static void
probe_load (void)
{
  registry_add_filter ("probe");
}

static void
probe_unload (void)
{
  registry_remove_filter ("probe");
}

static int
probe_get_ready (int thread_model)
{
  char *list = registry_list_filters ();

  nbdkit_debug ("probe: registry %p holds: %s",
                registry_instance (), list ? list : "?");
  free (list);
  return 0;
}

static struct nbdkit_filter filter = {
  .name              = "probe",
  .longname          = "nbdkit-backup test probe filter",
  .load              = probe_load,
  .unload            = probe_unload,
  .get_ready         = probe_get_ready,
};

NBDKIT_REGISTER_FILTER (filter)
