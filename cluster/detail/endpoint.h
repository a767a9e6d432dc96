#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include "runtime/config.h"
#include "runtime/status.h"

namespace cairn::detail {

// Resolves a listen address (numeric or a host name) to the first endpoint for binding.
Result<boost::asio::ip::tcp::endpoint> resolve_endpoint(boost::asio::io_context& io, const HostPort& address);

// Opens, binds and listens `acceptor` on `address`; returns the address actually bound (the real
// port when port 0 was asked for). Errors name `setting` (e.g. "node.listen") and the address.
Result<HostPort> listen_on(boost::asio::ip::tcp::acceptor& acceptor, boost::asio::io_context& io,
                           const HostPort& address, const std::string& setting);

}  // namespace cairn::detail
