include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(KEYLOCK_CMAKE_DIR "${CMAKE_INSTALL_LIBDIR}/cmake/keylock")

install(TARGETS keylock EXPORT keylockTargets
    ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
    LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
    RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(DIRECTORY include/keylock DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT keylockTargets
    NAMESPACE keylock::
    DESTINATION ${KEYLOCK_CMAKE_DIR})

configure_package_config_file(cmake/keylockConfig.cmake.in
    "${PROJECT_BINARY_DIR}/keylockConfig.cmake"
    INSTALL_DESTINATION ${KEYLOCK_CMAKE_DIR})
write_basic_package_version_file("${PROJECT_BINARY_DIR}/keylockConfigVersion.cmake"
    COMPATIBILITY SameMinorVersion)
install(FILES
    "${PROJECT_BINARY_DIR}/keylockConfig.cmake"
    "${PROJECT_BINARY_DIR}/keylockConfigVersion.cmake"
    DESTINATION ${KEYLOCK_CMAKE_DIR})
