# Installs the client library with a CMake package config, so another project can
#   find_package(cairn REQUIRED)
#   target_link_libraries(app PRIVATE cairn::client)
include(CMakePackageConfigHelpers)

set_target_properties(cairn_runtime PROPERTIES EXPORT_NAME runtime)
set_target_properties(cairn_client PROPERTIES EXPORT_NAME client)
install(TARGETS cairn_runtime cairn_client EXPORT cairnTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(FILES client/include/cairn/client.h client/include/cairn/artifacts.h DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/cairn)
install(DIRECTORY runtime/ DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/cairn/runtime
  FILES_MATCHING PATTERN "*.h" PATTERN "detail" EXCLUDE)
install(EXPORT cairnTargets NAMESPACE cairn:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/cairn)
configure_package_config_file(cmake/cairnConfig.cmake.in ${CMAKE_CURRENT_BINARY_DIR}/cairnConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/cairn)
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/cairnConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/cairnConfig.cmake ${CMAKE_CURRENT_BINARY_DIR}/cairnConfigVersion.cmake
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/cairn)
