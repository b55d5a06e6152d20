# SPDX-License-Identifier: BSL-1.0
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(KEYLOCK_CMAKE_DIR "${CMAKE_INSTALL_LIBDIR}/cmake/keylock")

set(_keylock_targets keylock keylock_testing)
if(KEYLOCK_BUILD_REDIS)
    list(APPEND _keylock_targets keylock_redis)
endif()
install(TARGETS ${_keylock_targets} EXPORT keylockTargets
    ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
    LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
    RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(DIRECTORY include/keylock DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(FILES ${PROJECT_BINARY_DIR}/include/keylock/version.hpp DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/keylock)
install(FILES LICENSE THIRD-PARTY-NOTICES.md CHANGELOG.md DESTINATION ${CMAKE_INSTALL_DOCDIR})
if(TARGET keylock_cli)
    install(TARGETS keylock_cli RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
    install(FILES man/keylock.1 DESTINATION ${CMAKE_INSTALL_MANDIR}/man1)
    install(FILES docs/cli.md DESTINATION ${CMAKE_INSTALL_DOCDIR})
endif()

# pkg-config: keylock.pc, and keylock-redis.pc with the Redis backend. Relocatable: their
# prefix is found from where they are (${pcfiledir}), so `cmake --install --prefix` works.
file(RELATIVE_PATH KEYLOCK_PC_TO_PREFIX "/prefix/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/prefix")
string(REGEX REPLACE "/$" "" KEYLOCK_PC_TO_PREFIX "${KEYLOCK_PC_TO_PREFIX}")
configure_file(cmake/keylock.pc.in "${PROJECT_BINARY_DIR}/keylock.pc" @ONLY)
install(FILES "${PROJECT_BINARY_DIR}/keylock.pc" DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
configure_file(cmake/keylock-testing.pc.in "${PROJECT_BINARY_DIR}/keylock-testing.pc" @ONLY)
install(FILES "${PROJECT_BINARY_DIR}/keylock-testing.pc" DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
if(KEYLOCK_BUILD_REDIS)
    configure_file(cmake/keylock-redis.pc.in "${PROJECT_BINARY_DIR}/keylock-redis.pc" @ONLY)
    install(FILES "${PROJECT_BINARY_DIR}/keylock-redis.pc" DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
endif()
install(FILES backends/local/anchor.cpp
    DESTINATION ${CMAKE_INSTALL_DATADIR}/keylock
    RENAME keylock_local_anchor.cpp)
if(KEYLOCK_BUILD_REDIS)
    install(FILES backends/redis/anchor.cpp
        DESTINATION ${CMAKE_INSTALL_DATADIR}/keylock
        RENAME keylock_redis_anchor.cpp)
endif()
install(EXPORT keylockTargets
    NAMESPACE keylock::
    DESTINATION ${KEYLOCK_CMAKE_DIR})

# Read by keylockConfig.cmake.in: whether keylock::redis (and so its dependencies) is in the package.
set(KEYLOCK_PACKAGE_HAS_REDIS ${KEYLOCK_BUILD_REDIS})
configure_package_config_file(cmake/keylockConfig.cmake.in
    "${PROJECT_BINARY_DIR}/keylockConfig.cmake"
    INSTALL_DESTINATION ${KEYLOCK_CMAKE_DIR})
write_basic_package_version_file("${PROJECT_BINARY_DIR}/keylockConfigVersion.cmake"
    COMPATIBILITY SameMinorVersion)
install(FILES
    "${PROJECT_BINARY_DIR}/keylockConfig.cmake"
    "${PROJECT_BINARY_DIR}/keylockConfigVersion.cmake"
    DESTINATION ${KEYLOCK_CMAKE_DIR})
