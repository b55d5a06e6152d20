# SPDX-License-Identifier: BSL-1.0
# The `docs` target: the API reference from the public headers' comments, with Doxygen
# (Debian's `doxygen`), into <build>/docs/api/html. A warning fails it (docs/Doxyfile.in).
find_program(KEYLOCK_DOXYGEN doxygen)
if(KEYLOCK_DOXYGEN)
    configure_file(docs/Doxyfile.in ${PROJECT_BINARY_DIR}/docs/Doxyfile @ONLY)
    add_custom_target(docs
        COMMAND ${KEYLOCK_DOXYGEN} ${PROJECT_BINARY_DIR}/docs/Doxyfile
        WORKING_DIRECTORY ${PROJECT_SOURCE_DIR}
        COMMENT "API reference (Doxygen) in ${PROJECT_BINARY_DIR}/docs/api/html"
        VERBATIM)
endif()
