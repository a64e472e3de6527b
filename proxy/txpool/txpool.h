// proxy/txpool/txpool.h — the pool modes' shared machinery: everything that lets a session live on
// a server connection that is not its own. It owns what a session carries (settings, named
// statements, what cannot move), how a shared connection's request stream is edited and how its
// answers are sorted back, and what a client hears when its server died under it.
//
// Where the pool modes live:
// - session pooling (`pool_mode = "session"`): a client keeps one server connection. The relay
//   (proxy/client.cc, proxy/server.cc) forwards bytes as they come; this subsystem is used only
//   when that server dies and the session resumes on another (replay.h, lost_transaction.h).
// - transaction pooling (`pool_mode = "transaction"`): a client holds a server connection only
//   while a transaction runs. Every request goes through prepared.h (statement names made the
//   client's own), replay.h (settings restored first), and response_plan.h (answers sorted back,
//   pgkeel's own swallowed); session_state.h decides what pins a session to its connection.
//
// The pieces, all pure (messages and text in, messages and verdicts out; no sockets, no clock):
//   session_state.h    SET / RESET / DISCARD / PREPARE tracked as PostgreSQL applies them, and
//                      what cannot be replayed (LISTEN, temporary tables, advisory locks, ...);
//                      PinWordScan reads the text of a statement too long to hold as it passes
//   prepared.h         client statement names -> shared server statements (pgk_<sha256>); a
//                      message too long to hold is rewritten from its head and streamed
//   response_plan.h    which server answer belongs to which request (the Syncs PostgreSQL
//                      ignores in copy-in mode get none); pgkeel's own answers
//   replay.h           what a server connection is sent so that it carries a client's session
//   lost_transaction.h the answers owed for a transaction whose server died
//
// The arrows: proxy/client.cc and proxy/server.cc use this subsystem; it uses only the wire
// format (proxy/protocol). It is its own CMake target (pgkeel_txpool), linking only
// pgkeel_protocol and libcrypto: no libevent, no sockets. What it decides, the relay does: the
// relay owns the bytes, their memory bound and backpressure (client.cc kMaxHeldMessage).
#pragma once

#include "proxy/txpool/lost_transaction.h"
#include "proxy/txpool/prepared.h"
#include "proxy/txpool/replay.h"
#include "proxy/txpool/response_plan.h"
#include "proxy/txpool/session_state.h"
