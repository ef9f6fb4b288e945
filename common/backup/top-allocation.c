/* nbdkit-backup
 * Copyright (C) 2026 the nbdkit-backup authors.
 * SPDX-License-Identifier: BSD-3-Clause
 */

/* The top layer's allocation, kept in the registry as the one object
 * of kind "allocation" (queries never list that kind).
 */

#include <config.h>

#include <stddef.h>

#include "registry.h"
#include "top-allocation.h"

#define KIND "allocation"
#define NAME "top"

int
top_allocation_offer (const struct top_allocation *ta)
{
  return registry_add_object (KIND, NAME, (void *) ta, NULL);
}

void
top_allocation_withdraw (void)
{
  registry_remove_object (KIND, NAME);
}

const struct top_allocation *
top_allocation_find (void)
{
  return registry_find_object (KIND, NAME);
}
