#ifndef REMORA_VERSION_H
#define REMORA_VERSION_H

#define REMORA_VERSION "0.1.0"

#endif
