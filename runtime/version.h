#pragma once
namespace cairn {
inline constexpr const char* kCairnVersion = "0.1.0";
}
