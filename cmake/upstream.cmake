# Upstream acquisition: stable-diffusion.cpp + ggml exactly as vendored in a pinned
# PyPI sdist, verified by sha256, extracted into the build tree and patched with
# ggml-patches/*.patch in order. Upstream code is never committed to this repo.
#
# Sources, in order of precedence:
#   BONSAI_SD_UPSTREAM_DIR      (CMake option or environment variable) a local
#                               stable-diffusion.cpp tree of the pinned commit, with ggml/
#   BONSAI_SD_UPSTREAM_ARCHIVE  (CMake option or environment variable) a local copy of the sdist
#   otherwise the sdist in the download cache, fetched there with `pip download` when absent.
# The cache is $BONSAI_SD_CACHE_DIR, else $XDG_CACHE_HOME/bonsai-sd, else ~/.cache/bonsai-sd.

set(BONSAI_SD_SDIST_NAME    "stable-diffusion-cpp-python")
set(BONSAI_SD_SDIST_VERSION "0.4.7")
set(BONSAI_SD_SDIST_FILE    "stable_diffusion_cpp_python-0.4.7.tar.gz")
set(BONSAI_SD_SDIST_SHA256  "998d1957260dd5ae4e18a8acc0c14b0a8757aaa9f96515197b6d5bbf46df9282")
set(BONSAI_SD_SDIST_SUBDIR  "stable_diffusion_cpp_python-0.4.7/vendor/stable-diffusion.cpp")
# What the sdist vendors (it carries no .git, so upstream's CMake cannot find these itself).
set(BONSAI_SD_SDCPP_COMMIT  "60477fd5")
set(BONSAI_SD_SDCPP_VERSION "master-597-6ee0684-1-g60477fd5")
set(BONSAI_SD_GGML_COMMIT   "404fcb9d")

set(BONSAI_SD_UPSTREAM_DIR "$ENV{BONSAI_SD_UPSTREAM_DIR}" CACHE PATH
    "Use this local stable-diffusion.cpp tree (pinned commit, with ggml/) instead of the PyPI sdist")
set(BONSAI_SD_UPSTREAM_ARCHIVE "$ENV{BONSAI_SD_UPSTREAM_ARCHIVE}" CACHE FILEPATH
    "Use this local copy of the ${BONSAI_SD_SDIST_NAME} ${BONSAI_SD_SDIST_VERSION} sdist")

function(_bonsai_sd_cache_dir out)
    if(NOT "$ENV{BONSAI_SD_CACHE_DIR}" STREQUAL "")
        set(dir "$ENV{BONSAI_SD_CACHE_DIR}")
    elseif(NOT "$ENV{XDG_CACHE_HOME}" STREQUAL "")
        set(dir "$ENV{XDG_CACHE_HOME}/bonsai-sd")
    elseif(WIN32 AND NOT "$ENV{LOCALAPPDATA}" STREQUAL "")
        set(dir "$ENV{LOCALAPPDATA}/bonsai-sd")
    else()
        set(dir "$ENV{HOME}/.cache/bonsai-sd")
    endif()
    file(TO_CMAKE_PATH "${dir}" dir)
    set(${out} "${dir}" PARENT_SCOPE)
endfunction()

function(_bonsai_sd_verify_archive path)
    file(SHA256 "${path}" actual)
    if(NOT actual STREQUAL BONSAI_SD_SDIST_SHA256)
        message(FATAL_ERROR
            "bonsai-sd: upstream archive '${path}' has sha256 ${actual}, but the pinned "
            "${BONSAI_SD_SDIST_NAME} ${BONSAI_SD_SDIST_VERSION} sdist has ${BONSAI_SD_SDIST_SHA256}. "
            "The file is damaged or is not the pinned release: delete it and configure again "
            "(it will be downloaded anew), or set BONSAI_SD_UPSTREAM_DIR to a stable-diffusion.cpp "
            "checkout of commit ${BONSAI_SD_SDCPP_COMMIT}.")
    endif()
endfunction()

# Sets <out> to a verified sdist path, downloading it into the cache when needed.
function(_bonsai_sd_obtain_archive out)
    if(BONSAI_SD_UPSTREAM_ARCHIVE)
        if(NOT EXISTS "${BONSAI_SD_UPSTREAM_ARCHIVE}")
            message(FATAL_ERROR "bonsai-sd: BONSAI_SD_UPSTREAM_ARCHIVE '${BONSAI_SD_UPSTREAM_ARCHIVE}' does not exist")
        endif()
        _bonsai_sd_verify_archive("${BONSAI_SD_UPSTREAM_ARCHIVE}")
        set(${out} "${BONSAI_SD_UPSTREAM_ARCHIVE}" PARENT_SCOPE)
        return()
    endif()

    _bonsai_sd_cache_dir(cache)
    set(cached "${cache}/${BONSAI_SD_SDIST_FILE}")
    if(EXISTS "${cached}")
        _bonsai_sd_verify_archive("${cached}")
        set(${out} "${cached}" PARENT_SCOPE)
        return()
    endif()

    if(NOT Python_EXECUTABLE)
        find_package(Python COMPONENTS Interpreter REQUIRED)
    endif()
    message(STATUS "bonsai-sd: downloading ${BONSAI_SD_SDIST_NAME}==${BONSAI_SD_SDIST_VERSION} (sdist) into ${cache}")
    string(RANDOM LENGTH 8 tag)
    set(tmp "${cache}/download-${tag}")
    file(MAKE_DIRECTORY "${tmp}")
    # --no-build-isolation: pip prepares the sdist's metadata with the scikit-build-core
    # already present here instead of installing a build environment for it.
    execute_process(
        COMMAND "${Python_EXECUTABLE}" -m pip download --no-deps --no-build-isolation
                --no-binary "${BONSAI_SD_SDIST_NAME}" --disable-pip-version-check
                "${BONSAI_SD_SDIST_NAME}==${BONSAI_SD_SDIST_VERSION}" -d "${tmp}"
        RESULT_VARIABLE rc OUTPUT_VARIABLE pip_out ERROR_VARIABLE pip_err)
    file(GLOB got "${tmp}/*.tar.gz")
    if(NOT rc EQUAL 0 OR NOT got)
        file(REMOVE_RECURSE "${tmp}")
        message(FATAL_ERROR
            "bonsai-sd: could not download ${BONSAI_SD_SDIST_NAME}==${BONSAI_SD_SDIST_VERSION} with pip "
            "(exit ${rc}):\n${pip_err}\n"
            "Without network access, copy ${BONSAI_SD_SDIST_FILE} (sha256 ${BONSAI_SD_SDIST_SHA256}) "
            "into ${cache}, or set BONSAI_SD_UPSTREAM_ARCHIVE or BONSAI_SD_UPSTREAM_DIR.")
    endif()
    list(GET got 0 got)
    file(SHA256 "${got}" actual)
    if(NOT actual STREQUAL BONSAI_SD_SDIST_SHA256)
        file(REMOVE_RECURSE "${tmp}")
        message(FATAL_ERROR
            "bonsai-sd: the downloaded ${BONSAI_SD_SDIST_NAME} ${BONSAI_SD_SDIST_VERSION} sdist has sha256 "
            "${actual}, expected ${BONSAI_SD_SDIST_SHA256}; refusing to build from it (check your package index).")
    endif()
    file(RENAME "${got}" "${cached}")
    file(REMOVE_RECURSE "${tmp}")
    set(${out} "${cached}" PARENT_SCOPE)
endfunction()

# Applies one patch to the scratch tree <dir>; fails configure naming the patch.
function(_bonsai_sd_apply_patch dir patch)
    get_filename_component(name "${patch}" NAME)
    find_program(BONSAI_SD_GIT git)
    find_program(BONSAI_SD_PATCH patch)
    if(BONSAI_SD_GIT)
        # The ceiling keeps git from discovering an enclosing repository (the build tree
        # may sit inside a git checkout, where `git apply` would resolve paths from its root).
        get_filename_component(parent "${dir}" DIRECTORY)
        execute_process(
            COMMAND "${CMAKE_COMMAND}" -E env "GIT_CEILING_DIRECTORIES=${parent}"
                    "${BONSAI_SD_GIT}" apply --whitespace=nowarn "${patch}"
            WORKING_DIRECTORY "${dir}" RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
    elseif(BONSAI_SD_PATCH)
        execute_process(
            COMMAND "${BONSAI_SD_PATCH}" -p1 --forward --batch --input "${patch}"
            WORKING_DIRECTORY "${dir}" RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
    else()
        message(FATAL_ERROR "bonsai-sd: neither git nor patch was found; one is needed to apply ggml-patches/")
    endif()
    if(NOT rc EQUAL 0)
        file(REMOVE_RECURSE "${dir}")
        message(FATAL_ERROR
            "bonsai-sd: patch ggml-patches/${name} does not apply to the pinned upstream "
            "(stable-diffusion.cpp ${BONSAI_SD_SDCPP_COMMIT}, ggml ${BONSAI_SD_GGML_COMMIT}):\n${out}${err}")
    endif()
endfunction()

# Copies <from> over <to>, touching only files whose content differs, so a changed
# patch rebuilds only the sources it changes.
function(_bonsai_sd_sync_tree from to)
    file(GLOB_RECURSE new_files LIST_DIRECTORIES false RELATIVE "${from}" "${from}/*")
    file(GLOB_RECURSE old_files LIST_DIRECTORIES false RELATIVE "${to}" "${to}/*")
    foreach(f ${new_files})
        file(COPY_FILE "${from}/${f}" "${to}/${f}" ONLY_IF_DIFFERENT)
    endforeach()
    list(REMOVE_ITEM old_files ${new_files})
    foreach(f ${old_files})
        file(REMOVE "${to}/${f}")
    endforeach()
endfunction()

# Sets <out> to the patched upstream tree under the build directory. Idempotent: a
# stamp of the source identity and every patch's hash skips the work when nothing changed.
function(bonsai_sd_prepare_upstream out)
    set(root "${CMAKE_BINARY_DIR}/_upstream")
    set(src  "${root}/stable-diffusion.cpp")

    file(GLOB patches "${PROJECT_SOURCE_DIR}/ggml-patches/*.patch")
    list(SORT patches)
    set_property(DIRECTORY "${PROJECT_SOURCE_DIR}" APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${patches})

    if(BONSAI_SD_UPSTREAM_DIR)
        get_filename_component(udir "${BONSAI_SD_UPSTREAM_DIR}" ABSOLUTE)
        if(NOT EXISTS "${udir}/include/stable-diffusion.h" OR NOT EXISTS "${udir}/ggml/include/ggml.h")
            message(FATAL_ERROR
                "bonsai-sd: BONSAI_SD_UPSTREAM_DIR '${udir}' is not a stable-diffusion.cpp tree with its "
                "ggml submodule (expected include/stable-diffusion.h and ggml/include/ggml.h)")
        endif()
        set(identity "dir:${udir}")
    else()
        _bonsai_sd_obtain_archive(archive)
        set(identity "sdist:${BONSAI_SD_SDIST_SHA256}")
    endif()
    foreach(p ${patches})
        file(SHA256 "${p}" h)
        get_filename_component(n "${p}" NAME)
        string(APPEND identity "\n${n}:${h}")
    endforeach()
    string(SHA256 stamp "${identity}")

    if(EXISTS "${root}/stamp" AND EXISTS "${src}/include/stable-diffusion.h")
        file(READ "${root}/stamp" old_stamp)
        if(old_stamp STREQUAL stamp)
            set(${out} "${src}" PARENT_SCOPE)
            return()
        endif()
    endif()

    set(work "${root}/work")
    file(REMOVE_RECURSE "${work}" "${root}/extract" "${root}/stamp")
    if(BONSAI_SD_UPSTREAM_DIR)
        message(STATUS "bonsai-sd: copying upstream from ${udir}")
        file(COPY "${udir}/" DESTINATION "${work}" PATTERN ".git" EXCLUDE)
    else()
        message(STATUS "bonsai-sd: extracting ${archive}")
        file(ARCHIVE_EXTRACT INPUT "${archive}" DESTINATION "${root}/extract"
             PATTERNS "${BONSAI_SD_SDIST_SUBDIR}")
        file(RENAME "${root}/extract/${BONSAI_SD_SDIST_SUBDIR}" "${work}")
        file(REMOVE_RECURSE "${root}/extract")
    endif()

    foreach(p ${patches})
        get_filename_component(n "${p}" NAME)
        message(STATUS "bonsai-sd: applying ${n}")
        _bonsai_sd_apply_patch("${work}" "${p}")
    endforeach()

    if(EXISTS "${src}")
        _bonsai_sd_sync_tree("${work}" "${src}")
        file(REMOVE_RECURSE "${work}")
    else()
        file(RENAME "${work}" "${src}")
    endif()
    file(WRITE "${root}/stamp" "${stamp}")
    set(${out} "${src}" PARENT_SCOPE)
endfunction()
