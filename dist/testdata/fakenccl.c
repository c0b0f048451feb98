/* A stand-in for libnccl.so.2 with nccl.h's C signatures, for
 * dist/nccl_test.go: it checks that the purego binding passes every
 * argument where the C ABI puts it (the 128-byte id by value included) and
 * returns what a one-box NCCL would, with host memory standing in for
 * device memory. Not NCCL: its all-reduce multiplies by nranks, as if every
 * rank held the same data. Build: cc -shared -fPIC [-DSCALABLE]
 * [-DVERSION=n] -o libnccl.so.2 fakenccl.c */
#include <stddef.h>
#include <string.h>

#ifndef VERSION
#define VERSION 23007
#endif

typedef struct { char internal[128]; } ncclUniqueId;
typedef struct fakeComm { int nranks, rank; } *ncclComm_t;

static struct fakeComm comms[8];
static int ncomms;
/* The last all-reduce's arguments, read back by the test with fake_last. */
static long long fake_last_count, fake_last_stream;
static int fake_last_dtype = -1, fake_last_op = -1;

long long fake_last(int which) {
	switch (which) {
	case 0: return fake_last_count;
	case 1: return fake_last_dtype;
	case 2: return fake_last_op;
	}
	return fake_last_stream;
}

/* fake_comm_state is a comm's nranks: -1 after destroy, -2 after abort. */
int fake_comm_state(ncclComm_t comm) { return comm->nranks; }

int ncclGetVersion(int *v) { *v = VERSION; return 0; }

const char *ncclGetErrorString(int r) {
	switch (r) {
	case 4: return "invalid argument";
	case 5: return "invalid usage";
	}
	return "unknown result";
}

int ncclGetUniqueId(ncclUniqueId *id) {
	for (int i = 0; i < 128; i++) id->internal[i] = (char)(i * 7 + 3);
	return 0;
}

static int join(ncclComm_t *comm, int nranks, const ncclUniqueId *id, int rank) {
	for (int i = 0; i < 128; i++)
		if (id->internal[i] != (char)(i * 7 + 3)) return 4;
	if (rank < 0 || rank >= nranks || ncomms == 8) return 4;
	comms[ncomms].nranks = nranks;
	comms[ncomms].rank = rank;
	*comm = &comms[ncomms++];
	return 0;
}

int ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank) {
	return join(comm, nranks, &id, rank);
}

#ifdef SCALABLE
int ncclCommInitRankScalable(ncclComm_t *comm, int nranks, int rank, int nId, ncclUniqueId *ids, void *config) {
	if (nId != 1 || config != NULL) return 4;
	return join(comm, nranks + 1000, ids, rank) == 0 ? ((*comm)->nranks -= 1000, 0) : 4;
}
#endif

int ncclAllReduce(const void *send, void *recv, size_t count, int dtype, int op, ncclComm_t comm, void *stream) {
	fake_last_count = (long long)count;
	fake_last_dtype = dtype;
	fake_last_op = op;
	fake_last_stream = (long long)stream;
	if (count == 13) return 5;
	for (size_t i = 0; i < count; i++) {
		if (dtype == 7) ((float *)recv)[i] = ((const float *)send)[i] * comm->nranks;
		else if (dtype == 8) ((double *)recv)[i] = ((const double *)send)[i] * comm->nranks;
		else return 4;
	}
	return 0;
}

int ncclCommGetAsyncError(ncclComm_t comm, int *r) { *r = comm->rank == 1 ? 6 : 0; return 0; }
int ncclCommDestroy(ncclComm_t comm) { comm->nranks = -1; return 0; }
int ncclCommAbort(ncclComm_t comm) { comm->nranks = -2; return 0; }
