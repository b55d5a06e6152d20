# SPDX-License-Identifier: BSL-1.0
# A Debian package from CPack: `cpack -G DEB` in a build configured with
# -DCMAKE_INSTALL_PREFIX=/usr (scripts/package.sh builds, installs and tests it). One package,
# keylock, with what `cmake --install` installs: the libraries, headers, CMake and pkg-config
# files, the keylock command and its manual page. Runtime dependencies of the shared libraries
# and the command come from dpkg-shlibdeps; the headers' own (Boost.Asio, Boost.URL) and a
# static link's (hiredis, OpenSSL) are named here.
set(CPACK_PACKAGE_NAME keylock)
set(CPACK_PACKAGE_VENDOR keylock)
set(CPACK_PACKAGE_CONTACT "keylock maintainers <keylock@invalid>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "${PROJECT_DESCRIPTION}")
set(CPACK_PACKAGE_DESCRIPTION
    "keylock serialises work per key: a keyed lock registry with in-process (local://) and Redis backends behind one interface.")
set(CPACK_RESOURCE_FILE_LICENSE "${PROJECT_SOURCE_DIR}/LICENSE")
set(CPACK_PACKAGING_INSTALL_PREFIX "${CMAKE_INSTALL_PREFIX}")
set(CPACK_GENERATOR DEB)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)  # keylock_<version>_<arch>.deb
set(CPACK_DEBIAN_PACKAGE_SECTION libdevel)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(_keylock_deb_depends "libboost1.81-dev, libboost-url1.81-dev")
if(KEYLOCK_BUILD_REDIS)
    string(APPEND _keylock_deb_depends ", libhiredis-dev, libssl-dev")
endif()
set(CPACK_DEBIAN_PACKAGE_DEPENDS "${_keylock_deb_depends}")
include(CPack)
