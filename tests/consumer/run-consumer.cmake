# SPDX-License-Identifier: BSL-1.0
# Driver of the "packaging" CTests (see tests/packaging.cmake); run with `cmake -P`.
#
# MODE=find_package:     configure + build keylock alone (tests, examples, bench OFF; warnings
#                        as errors), `cmake --install` it to WORK_DIR/prefix, check the installed
#                        tree, then build tests/consumer against it with CMAKE_PREFIX_PATH and
#                        run it.
# MODE=add_subdirectory: build tests/consumer with add_subdirectory(KEYLOCK_SOURCE_DIR) and run it.
#
# Variables (-D before -P):
#   MODE                find_package | add_subdirectory (required)
#   KEYLOCK_SOURCE_DIR  keylock's source tree (required)
#   WORK_DIR            scratch directory, emptied first (required)
#   CXX_COMPILER        the C++ compiler to use (optional; the outer build's)
#   BUILD_TYPE          CMAKE_BUILD_TYPE / --config of the inner builds (optional)
#   GENERATOR           CMake generator of the inner builds (optional)
#   MAKE_PROGRAM        CMAKE_MAKE_PROGRAM of the inner builds (optional)
#   SHARED              BUILD_SHARED_LIBS of the inner builds (default OFF)
#   JOBS                build parallelism (default 2)
#
# The inner builds are plain: none of the outer build's flags (e.g. sanitizers) are passed on,
# and CFLAGS/CXXFLAGS/CPPFLAGS/LDFLAGS from the environment are ignored.
cmake_minimum_required(VERSION 3.25)

foreach(var IN ITEMS MODE KEYLOCK_SOURCE_DIR WORK_DIR)
    if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
        message(FATAL_ERROR "run-consumer.cmake: -D${var}=... is required")
    endif()
endforeach()
if(NOT MODE MATCHES "^(find_package|add_subdirectory)$")
    message(FATAL_ERROR "run-consumer.cmake: MODE must be find_package or add_subdirectory, not '${MODE}'")
endif()
if(NOT DEFINED SHARED OR "${SHARED}" STREQUAL "")
    set(SHARED OFF)
endif()
if(NOT JOBS)
    set(JOBS 2)
endif()
set(CONSUMER_SOURCE_DIR "${CMAKE_CURRENT_LIST_DIR}")

foreach(env IN ITEMS CFLAGS CXXFLAGS CPPFLAGS LDFLAGS CMAKE_BUILD_PARALLEL_LEVEL)
    unset(ENV{${env}})
endforeach()

# Options every inner configure gets.
set(common_args -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF -DBUILD_SHARED_LIBS=${SHARED})
if(CXX_COMPILER)
    list(APPEND common_args "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}")
endif()
if(NOT "${BUILD_TYPE}" STREQUAL "")
    list(APPEND common_args "-DCMAKE_BUILD_TYPE=${BUILD_TYPE}")
    set(config_args --config "${BUILD_TYPE}")
else()
    set(config_args)
endif()
if(GENERATOR)
    list(APPEND common_args -G "${GENERATOR}")
endif()
if(MAKE_PROGRAM)
    list(APPEND common_args "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}")
endif()

# Runs one step, its output going to ours; fails the test if the step fails.
function(step name)
    message(STATUS "[${MODE}] ${name}")
    execute_process(COMMAND ${ARGN} RESULT_VARIABLE rv COMMAND_ECHO STDOUT)
    if(NOT rv EQUAL 0)
        message(FATAL_ERROR "[${MODE}] step '${name}' failed (${rv})")
    endif()
endfunction()

function(fail)
    string(JOIN "" text ${ARGN})
    message(FATAL_ERROR "[${MODE}] ${text}")
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")
set(consumer_build "${WORK_DIR}/consumer")

if(MODE STREQUAL "find_package")
    set(keylock_build "${WORK_DIR}/keylock")
    set(prefix "${WORK_DIR}/prefix")
    # The configured prefix is deliberately not where it gets installed: the package must be
    # relocatable (`cmake --install --prefix`).
    step("configure keylock" "${CMAKE_COMMAND}" -S "${KEYLOCK_SOURCE_DIR}" -B "${keylock_build}"
        ${common_args}
        -DKEYLOCK_BUILD_TESTS=OFF -DKEYLOCK_BUILD_EXAMPLES=OFF -DKEYLOCK_BUILD_BENCH=OFF
        -DKEYLOCK_INSTALL=ON
        -DCMAKE_COMPILE_WARNING_AS_ERROR=ON
        "-DCMAKE_INSTALL_PREFIX=${WORK_DIR}/not-the-prefix")
    step("build keylock" "${CMAKE_COMMAND}" --build "${keylock_build}" ${config_args} --parallel ${JOBS})
    step("install keylock" "${CMAKE_COMMAND}" --install "${keylock_build}" ${config_args} --prefix "${prefix}")

    # The installed tree: public headers, library, package files; nothing private.
    foreach(header IN ITEMS keylock.hpp registry.hpp guard.hpp options.hpp error.hpp
                            detail/backend.hpp detail/async_op.hpp)
        if(NOT EXISTS "${prefix}/include/keylock/${header}")
            fail("not installed: include/keylock/${header}")
        endif()
    endforeach()
    file(GLOB_RECURSE private_headers RELATIVE "${prefix}" "${prefix}/*config.hpp" "${prefix}/*local_backend.hpp")
    if(private_headers)
        fail("private headers installed: ${private_headers}")
    endif()
    # The keylock command comes with the library and runs from the installed tree.
    if(NOT EXISTS "${prefix}/bin/keylock")
        fail("not installed: bin/keylock")
    endif()
    step("run the installed keylock command" "${prefix}/bin/keylock" --help)
    file(GLOB_RECURSE config_files "${prefix}/*/keylockConfig.cmake")
    list(LENGTH config_files n)
    if(NOT n EQUAL 1)
        fail("expected one keylockConfig.cmake under ${prefix}, found: ${config_files}")
    endif()
    get_filename_component(package_dir "${config_files}" DIRECTORY)
    foreach(f IN ITEMS keylockConfigVersion.cmake keylockTargets.cmake)
        if(NOT EXISTS "${package_dir}/${f}")
            fail("not installed: ${package_dir}/${f}")
        endif()
    endforeach()
    file(GLOB_RECURSE static_libs "${prefix}/*libkeylock*.a")
    file(GLOB_RECURSE shared_libs "${prefix}/*libkeylock*.so*")
    if(SHARED AND (NOT shared_libs OR static_libs))
        fail("BUILD_SHARED_LIBS=ON should install only libkeylock.so*; found: ${shared_libs} ${static_libs}")
    elseif(NOT SHARED AND (NOT static_libs OR shared_libs))
        fail("BUILD_SHARED_LIBS=OFF should install only libkeylock.a; found: ${shared_libs} ${static_libs}")
    endif()
    # Nothing in the package may point back at the source or build tree.
    file(GLOB package_files "${package_dir}/*.cmake")
    foreach(f IN LISTS package_files)
        file(READ "${f}" text)
        foreach(tree IN ITEMS "${KEYLOCK_SOURCE_DIR}" "${keylock_build}" "${WORK_DIR}/not-the-prefix")
            string(FIND "${text}" "${tree}" at)
            if(NOT at EQUAL -1)
                fail("${f} refers to ${tree}")
            endif()
        endforeach()
    endforeach()

    # Every installed library has a versioned SONAME.
    if(SHARED)
        foreach(lib IN ITEMS keylock keylock_redis)
            file(GLOB_RECURSE lib_file "${prefix}/*lib${lib}.so.${KEYLOCK_SOVERSION}")
            if(NOT lib_file)
                fail("lib${lib}.so.${KEYLOCK_SOVERSION} (the SONAME's file) is not installed")
            endif()
            execute_process(COMMAND objdump -p "${lib_file}" OUTPUT_VARIABLE dynamic RESULT_VARIABLE rv)
            if(NOT rv EQUAL 0 OR NOT dynamic MATCHES "SONAME +lib${lib}\\.so\\.${KEYLOCK_SOVERSION}\n")
                fail("lib${lib}'s SONAME is not lib${lib}.so.${KEYLOCK_SOVERSION}")
            endif()
        endforeach()
    endif()

    # Components: one that does not exist, and one the package was built without (the
    # installed config file with its redis flag turned off), each fail with a message that says
    # which and why.
    set(probe "${WORK_DIR}/components")
    file(MAKE_DIRECTORY "${probe}/project")
    file(COPY "${package_dir}/" DESTINATION "${probe}/without-redis")
    file(READ "${probe}/without-redis/keylockConfig.cmake" text)
    string(REPLACE "set(keylock_redis_FOUND ON)" "set(keylock_redis_FOUND OFF)" edited "${text}")
    if(edited STREQUAL text)
        fail("keylockConfig.cmake does not say whether it has redis as expected")
    endif()
    file(WRITE "${probe}/without-redis/keylockConfig.cmake" "${edited}")
    foreach(case IN ITEMS "nosuch|${package_dir}|keylock has no component 'nosuch' \\(it has: local, testing, redis\\)"
                          "redis|${probe}/without-redis|built without its component 'redis'.*-DKEYLOCK_BUILD_REDIS=ON")
        string(REPLACE "|" ";" case "${case}")
        list(GET case 0 component)
        list(GET case 1 dir)
        list(GET case 2 expected)
        file(WRITE "${probe}/project/CMakeLists.txt"
            "cmake_minimum_required(VERSION 3.25)\nproject(probe LANGUAGES CXX)\n"
            "find_package(keylock CONFIG REQUIRED COMPONENTS ${component})\n")
        file(REMOVE_RECURSE "${probe}/build")
        execute_process(COMMAND "${CMAKE_COMMAND}" -S "${probe}/project" -B "${probe}/build" ${common_args}
                                "-Dkeylock_DIR=${dir}"
                        RESULT_VARIABLE rv OUTPUT_VARIABLE out ERROR_VARIABLE err)
        string(REGEX REPLACE "[ \n]+" " " err "${err}")  # CMake wraps long messages
        if(rv EQUAL 0 OR NOT err MATCHES "${expected}")
            fail("find_package(keylock COMPONENTS ${component}) should fail saying '${expected}'; it said: ${err}")
        endif()
    endforeach()

    # pkg-config: the same consumer, compiled and linked by hand with keylock-redis.pc's and
    # keylock-testing.pc's flags
    # (--static for the static libraries), then run.
    find_program(pkg_config pkg-config REQUIRED)
    file(GLOB_RECURSE pc_files "${prefix}/*/pkgconfig/keylock-redis.pc")
    if(NOT pc_files)
        fail("not installed: keylock-redis.pc")
    endif()
    get_filename_component(pc_dir "${pc_files}" DIRECTORY)
    get_filename_component(lib_dir "${pc_dir}" DIRECTORY)
    set(static_flag --static)
    if(SHARED)
        set(static_flag)
    endif()
    execute_process(COMMAND "${CMAKE_COMMAND}" -E env "PKG_CONFIG_PATH=${pc_dir}"
                            "${pkg_config}" --cflags --libs ${static_flag} keylock-redis keylock-testing
                    OUTPUT_VARIABLE pc_flags RESULT_VARIABLE rv OUTPUT_STRIP_TRAILING_WHITESPACE)
    if(NOT rv EQUAL 0)
        fail("pkg-config keylock-redis keylock-testing failed")
    endif()
    separate_arguments(pc_flags UNIX_COMMAND "${pc_flags}")
    set(cxx "${CXX_COMPILER}")
    if(NOT cxx)
        set(cxx c++)
    endif()
    step("build consumer with pkg-config" "${cxx}" -std=c++20 -Wall -Wextra -Wpedantic -Werror
        -DKEYLOCK_CONSUMER_REDIS "${CONSUMER_SOURCE_DIR}/main.cpp" -o "${WORK_DIR}/consumer-pkg-config" ${pc_flags})
    step("run consumer built with pkg-config" "${CMAKE_COMMAND}" -E env "LD_LIBRARY_PATH=${lib_dir}"
        "${WORK_DIR}/consumer-pkg-config")

    step("configure consumer" "${CMAKE_COMMAND}" -S "${CONSUMER_SOURCE_DIR}" -B "${consumer_build}"
        ${common_args}
        -DKEYLOCK_CONSUME=find_package
        "-DCMAKE_PREFIX_PATH=${prefix}")
    # The consumer must have found this package, not some other keylock on the system.
    file(STRINGS "${consumer_build}/CMakeCache.txt" found_dir REGEX "^keylock_DIR:")
    string(REGEX REPLACE "^keylock_DIR:[A-Z]+=" "" found_dir "${found_dir}")
    file(REAL_PATH "${found_dir}" found_dir)
    file(REAL_PATH "${package_dir}" package_dir_real)
    if(NOT found_dir STREQUAL package_dir_real)
        fail("the consumer found keylock in '${found_dir}', not in '${package_dir_real}'")
    endif()
else()
    step("configure consumer" "${CMAKE_COMMAND}" -S "${CONSUMER_SOURCE_DIR}" -B "${consumer_build}"
        ${common_args}
        -DKEYLOCK_CONSUME=add_subdirectory
        "-DKEYLOCK_SOURCE_DIR=${KEYLOCK_SOURCE_DIR}")
    # As a subproject keylock builds only itself and installs nothing by default.
    foreach(dir IN ITEMS tests examples bench)
        if(EXISTS "${consumer_build}/keylock-build/${dir}")
            fail("keylock as a subproject configured its ${dir} (they should default to OFF)")
        endif()
    endforeach()
    file(STRINGS "${consumer_build}/CMakeCache.txt" install_opt REGEX "^KEYLOCK_INSTALL:")
    if(NOT install_opt MATCHES "=OFF$")
        fail("keylock as a subproject should default KEYLOCK_INSTALL to OFF, got '${install_opt}'")
    endif()
endif()

step("build consumer" "${CMAKE_COMMAND}" --build "${consumer_build}" ${config_args} --parallel ${JOBS})
step("run consumer" "${CMAKE_CTEST_COMMAND}" --test-dir "${consumer_build}" ${config_args} --output-on-failure)
message(STATUS "[${MODE}] OK (BUILD_SHARED_LIBS=${SHARED}, build type '${BUILD_TYPE}')")
