// The takeover exchange's pieces (proxy/takeover.h): parcels over a socket pair with descriptors
// riding along, and the text of each parcel read back strictly.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <thread>

#include "proxy/takeover.h"

using namespace pgkeel::proxy::takeover;

TEST_CASE("a listeners parcel reads back as it was written, and refuses what does not match", "[takeover]") {
  const std::vector<Handed> handed = {
      {Handed::Kind::kTcp, "rw", "127.0.0.1", 6432, {}, 7},
      {Handed::Kind::kTcp, "rw", "127.0.0.1", 6432, {}, 8},
      {Handed::Kind::kUnix, "rw", {}, 0, "/run/pgkeel/.s.PGSQL.6432", 9},
      {Handed::Kind::kConsole, {}, "127.0.0.1", 6433, {}, 10},
      {Handed::Kind::kStatus, {}, "0.0.0.0", 8080, {}, 11},
  };
  const Parcel p = listeners_parcel(handed);
  CHECK(p.fds == std::vector<int>{7, 8, 9, 10, 11});
  std::string err;
  const auto back = parse_listeners(p, err);
  INFO(err);
  REQUIRE(back);
  CHECK(*back == handed);

  Parcel fewer = p;
  fewer.fds.pop_back();
  CHECK_FALSE(parse_listeners(fewer, err));
  CHECK(err.find("5 listeners described, 4 descriptors") != std::string::npos);
  CHECK_FALSE(parse_listeners(Parcel{"listeners\ntcp rw 127.0.0.1 99999\n", {3}}, err));
  CHECK_FALSE(parse_listeners(Parcel{"listeners\nudp rw 127.0.0.1 5\n", {3}}, err));
  CHECK_FALSE(parse_listeners(Parcel{"refused busy", {}}, err));
  CHECK(parse_listeners(Parcel{"listeners\n", {}}, err)->empty());
}

TEST_CASE("the keeper's last word: epoch and writer, or none", "[takeover]") {
  CHECK(keeper_text({12, "db2"}) == "keeper epoch=12 writer=db2");
  CHECK(keeper_text({3, ""}) == "keeper epoch=3 writer=-");
  const auto k = parse_keeper("keeper epoch=12 writer=db2");
  REQUIRE(k);
  CHECK(k->epoch == 12);
  CHECK(k->writer == "db2");
  CHECK(parse_keeper("keeper epoch=3 writer=-")->writer.empty());
  CHECK_FALSE(parse_keeper("keeper epoch=x writer=db2"));
  CHECK_FALSE(parse_keeper("keeper epoch=3"));
  CHECK_FALSE(parse_keeper("ready"));
  CHECK(field("hello pid=42 version=0.1.0", "pid") == "42");
  CHECK(field("hello pid=42 version=0.1.0", "version") == "0.1.0");
  CHECK(field("hello pid=42", "pi").empty());
}

TEST_CASE("parcels cross a socket pair whole, descriptors with them, however large", "[takeover]") {
  int sv[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  int pipefd[2];
  REQUIRE(::pipe2(pipefd, O_CLOEXEC) == 0);
  std::string err;
  const std::string big(200000, 'x');  // more than a socket buffer: sent and read in pieces
  bool sent_first = false;
  bool sent_big = false;
  std::thread sender([&] {  // Catch2's assertions belong to the main thread: checked after join()
    std::string e;
    sent_first = send_parcel(sv[0], Parcel{"first", {pipefd[0], pipefd[1]}}, std::chrono::seconds(5), e);
    sent_big = send_parcel(sv[0], Parcel{big, {}}, std::chrono::seconds(5), e);
  });
  const auto a = recv_parcel(sv[1], std::chrono::seconds(5), err);
  INFO(err);
  REQUIRE(a);
  CHECK(a->text == "first");
  REQUIRE(a->fds.size() == 2);
  // The received write end writes into the original pipe.
  REQUIRE(::write(a->fds[1], "z", 1) == 1);
  char c = 0;
  REQUIRE(::read(pipefd[0], &c, 1) == 1);
  CHECK(c == 'z');
  CHECK((::fcntl(a->fds[0], F_GETFD) & FD_CLOEXEC) != 0);
  const auto b = recv_parcel(sv[1], std::chrono::seconds(5), err);
  REQUIRE(b);
  CHECK(b->text == big);
  CHECK(b->fds.empty());
  sender.join();
  CHECK(sent_first);
  CHECK(sent_big);
  for (int fd : a->fds) ::close(fd);
  ::close(sv[0]);
  CHECK_FALSE(recv_parcel(sv[1], std::chrono::seconds(1), err));
  CHECK(err.find("closed") != std::string::npos);
  ::close(sv[1]);
  ::close(pipefd[0]);
  ::close(pipefd[1]);
}
