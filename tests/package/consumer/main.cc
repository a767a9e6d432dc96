// Pings the node at argv[1] with the token in argv[2] through the installed client library.
#include <cairn/client.h>

#include <iostream>

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: consumer HOST:PORT TOKEN\n";
    return 2;
  }
  cairn::ClientOptions options;
  options.address = argv[1];
  options.token = argv[2];
  auto client = cairn::Client::connect(options);
  if (!client.ok()) {
    std::cerr << client.status().to_string() << "\n";
    return 1;
  }
  auto status = (*client)->call_as<cairn::msg::NodeStatus>("node.status", cairn::msg::Empty{});
  if (!status.ok()) {
    std::cerr << status.status().to_string() << "\n";
    return 1;
  }
  std::cout << "consumer reached node " << status->node << " with " << status->actors.size() << " actors\n";
  return 0;
}
