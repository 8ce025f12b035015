/* Decimal numbers as settings and addresses spell them: digits only, no sign, no space. */
#ifndef REMORA_NUMBER_H
#define REMORA_NUMBER_H

#include <stddef.h>

/* s[0..len), 1 to 10 digits, as a number in [lo, hi]; -1 otherwise (lo >= 0). */
long decimal_parse(const char *s, size_t len, long lo, long hi);
/* s[0..len), 1 to 5 digits, as a port 1..65535; -1 otherwise. */
int port_parse(const char *s, size_t len);

#endif
