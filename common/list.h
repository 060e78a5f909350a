/*
 * list.h - an intrusive, circular, doubly linked list (the Linux kernel's
 * shape).  A `struct list_node` sits inside each element; the list's head
 * is a `struct list_node` of its own that list_init points at itself, so
 * no operation needs a special case for the first or the last element.
 * A node that list_init or list_del left alone is "unlinked": list_linked
 * says whether a node is on a list.  Nothing here allocates or locks.
 */
#ifndef WATCHRTC_LIST_H
#define WATCHRTC_LIST_H

#include <stdbool.h>
#include <stddef.h>

struct list_node {
	struct list_node *prev, *next;
};

/* The element that holds node ptr, a `struct list_node member` of type. */
#define list_entry(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

static inline void list_init(struct list_node *n)
{
	n->prev = n->next = n;
}

static inline bool list_empty(const struct list_node *head)
{
	return head->next == head;
}

/* True if n is on a list (n was initialised with list_init). */
static inline bool list_linked(const struct list_node *n)
{
	return n->next != n;
}

/* Puts n just before pos (before the head: at the tail). */
static inline void list_insert_before(struct list_node *pos, struct list_node *n)
{
	n->prev = pos->prev;
	n->next = pos;
	pos->prev->next = n;
	pos->prev = n;
}

static inline void list_add_tail(struct list_node *head, struct list_node *n)
{
	list_insert_before(head, n);
}

static inline void list_add_head(struct list_node *head, struct list_node *n)
{
	list_insert_before(head->next, n);
}

/* Takes n off its list and leaves it unlinked; harmless on an unlinked n. */
static inline void list_del(struct list_node *n)
{
	n->prev->next = n->next;
	n->next->prev = n->prev;
	list_init(n);
}

/* The first node, or NULL if the list is empty. */
static inline struct list_node *list_first(const struct list_node *head)
{
	return list_empty(head) ? NULL : head->next;
}

/* Every node of head in order; the body must not unlink pos. */
#define list_foreach(pos, head) for ((pos) = (head)->next; (pos) != (head); (pos) = (pos)->next)
/* The same, and the body may unlink (or free) pos. */
#define list_foreach_safe(pos, tmp, head) \
	for ((pos) = (head)->next, (tmp) = (pos)->next; (pos) != (head); \
	     (pos) = (tmp), (tmp) = (pos)->next)

#endif
