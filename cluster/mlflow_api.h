// MLflow's REST API (/api/2.0/mlflow/...) on the node's HTTP endpoint, served by the registry
// through the same Dispatcher as the msgpack protocol. docs/MLFLOW.md lists the endpoints and how
// they differ from MLflow.
//
// Each route authenticates the request (`Authorization: Bearer <token>`, as MLflow clients send
// MLFLOW_TRACKING_TOKEN, or Basic auth with the token as the password), reads its parameters (the
// query string for GET, the JSON body otherwise), turns them into the catalogue request of a
// registry.* op (runtime/messages/registry.h), and dispatches a Call with the token's role. The
// final reply becomes the MLflow JSON response; an error becomes MLflow's error shape
// {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "..."} with the matching HTTP status.
#pragma once

#include <string_view>

#include "cluster/auth.h"
#include "cluster/http_server.h"
#include "cluster/server.h"

namespace cairn {

// Every route lives under this prefix, as MLflow clients expect.
inline constexpr std::string_view kMlflowApiPrefix = "/api/2.0/mlflow";

// Adds the MLflow routes to `routes` (before the HTTP server starts). `dispatcher` and `tokens`
// must outlive every request the routes serve (in the node: until the HTTP server is gone).
void register_mlflow_routes(HttpRouter& routes, Dispatcher& dispatcher, const TokenStore& tokens);

// The MLflow error response for `status`: its error_code and HTTP status (not_found ->
// RESOURCE_DOES_NOT_EXIST 404, already_exists -> RESOURCE_ALREADY_EXISTS 400, bad_request ->
// INVALID_PARAMETER_VALUE 400, ...; see docs/MLFLOW.md for the table).
HttpResponse mlflow_error(const Status& status);

}  // namespace cairn
