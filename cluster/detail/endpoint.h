#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include "runtime/config.h"
#include "runtime/status.h"

namespace cairn::detail {

// Resolves a listen address (numeric or a host name) to the first endpoint for binding.
Result<boost::asio::ip::tcp::endpoint> resolve_endpoint(boost::asio::io_context& io, const HostPort& address);

}  // namespace cairn::detail
