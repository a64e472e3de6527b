// routing/node.h — the vocabulary every layer shares: nodes, their roles, and client intents.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace pgkeel::routing {

// Index of a node in the configuration's node list; stable for the life of a config.
using NodeId = std::uint32_t;

enum class Role : std::uint8_t { kUnknown, kPrimary, kStandby };

// What a listener (and later a transaction) asks of the node that serves it.
enum class Intent : std::uint8_t { kReadWrite, kReadOnly };

std::string_view to_string(Role role);
std::string_view to_string(Intent intent);

}  // namespace pgkeel::routing
