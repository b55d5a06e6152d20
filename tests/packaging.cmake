# SPDX-License-Identifier: BSL-1.0
# Packaging tests (label "packaging"): keylock must be usable by another CMake project both as
# an installed package and as a subdirectory. Each test builds tests/consumer in a scratch
# directory under this build tree with the same compiler and build type as this build, but
# with none of its flags (a sanitizer build's -fsanitize stays out of the inner builds), and
# independently of the keylock_tests executable.
#
#   packaging.find_package      keylock built shared with -Wall -Wextra -Wpedantic as errors,
#                               installed with `cmake --install --prefix` (SONAMEs checked),
#                               consumed through find_package(keylock CONFIG REQUIRED
#                               COMPONENTS local redis) and through pkg-config (keylock-redis.pc);
#                               a missing and an unknown component fail with their reason
#   packaging.find_package_static  the same with a static library (exercises the package's
#                               find_dependency(Boost ... url) for the private Boost.URL link,
#                               and pkg-config --static)
#   packaging.add_subdirectory  keylock (static) consumed through add_subdirectory
#
# The consumer itself compiles with -Wall -Wextra -Wpedantic -Werror with keylock's headers
# not treated as system headers.
set(_keylock_packaging_dir "${CMAKE_CURRENT_BINARY_DIR}/packaging")
set(_keylock_packaging_args
    "-DKEYLOCK_SOURCE_DIR=${keylock_SOURCE_DIR}"
    "-DCXX_COMPILER=${CMAKE_CXX_COMPILER}"
    "-DBUILD_TYPE=$<CONFIG>"
    "-DGENERATOR=${CMAKE_GENERATOR}"
    "-DMAKE_PROGRAM=${CMAKE_MAKE_PROGRAM}"
    "-DKEYLOCK_SOVERSION=${PROJECT_VERSION_MAJOR}.${PROJECT_VERSION_MINOR}"
    -DJOBS=2)

add_test(NAME packaging.find_package
    COMMAND "${CMAKE_COMMAND}" ${_keylock_packaging_args}
        -DMODE=find_package -DSHARED=ON
        "-DWORK_DIR=${_keylock_packaging_dir}/find_package"
        -P "${CMAKE_CURRENT_SOURCE_DIR}/consumer/run-consumer.cmake")
add_test(NAME packaging.find_package_static
    COMMAND "${CMAKE_COMMAND}" ${_keylock_packaging_args}
        -DMODE=find_package -DSHARED=OFF
        "-DWORK_DIR=${_keylock_packaging_dir}/find_package_static"
        -P "${CMAKE_CURRENT_SOURCE_DIR}/consumer/run-consumer.cmake")
add_test(NAME packaging.add_subdirectory
    COMMAND "${CMAKE_COMMAND}" ${_keylock_packaging_args}
        -DMODE=add_subdirectory -DSHARED=OFF
        "-DWORK_DIR=${_keylock_packaging_dir}/add_subdirectory"
        -P "${CMAKE_CURRENT_SOURCE_DIR}/consumer/run-consumer.cmake")
set_tests_properties(
    packaging.find_package packaging.find_package_static packaging.add_subdirectory
    PROPERTIES
        LABELS packaging
        # Each inner build runs 2 jobs: tell `ctest -j` so it does not oversubscribe.
        PROCESSORS 2
        TIMEOUT 300)
