/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include <config.h>

#include <stdlib.h>

#include <nbdkit-filter.h>

#include "registry.h"

static void
cbw_load (void)
{
  registry_add_filter ("cbw");
}

static int
cbw_get_ready (int thread_model)
{
  char *list = registry_list_filters ();

  nbdkit_debug ("cbw: registry %p holds: %s",
                registry_instance (), list ? list : "?");
  free (list);
  return 0;
}

static struct nbdkit_filter filter = {
  .name              = "cbw",
  .longname          = "nbdkit copy-before-write backup filter",
  .load              = cbw_load,
  .get_ready         = cbw_get_ready,
};

NBDKIT_REGISTER_FILTER (filter)
