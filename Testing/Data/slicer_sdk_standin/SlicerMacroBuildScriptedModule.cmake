# Our stand-in for Slicer's slicerMacroBuildScriptedModule (see README.md): same arguments, and the same
# ctkMacroCompilePythonScript call, which is what decides the build and install layout.
macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY_SLICER "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  if(MY_SLICER_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "Unknown keywords given to slicerMacroBuildScriptedModule(): ${MY_SLICER_UNPARSED_ARGUMENTS}")
  endif()
  foreach(value ${MY_SLICER_SCRIPTS} ${MY_SLICER_RESOURCES})
    if(NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${value} AND NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${value}.py)
      message(FATAL_ERROR "slicerMacroBuildScriptedModule given nonexistent file '${value}'")
    endif()
  endforeach()
  set(_od_no_install_subdir NO_INSTALL_SUBDIR)
  set(_od_subdir "")
  if(MY_SLICER_WITH_SUBDIR)
    get_filename_component(_od_subdir ${CMAKE_CURRENT_SOURCE_DIR} NAME)
    set(_od_subdir "/${_od_subdir}")
    set(_od_no_install_subdir "")
  endif()
  ctkMacroCompilePythonScript(
    TARGET_NAME ${MY_SLICER_NAME}
    SCRIPTS "${MY_SLICER_SCRIPTS}"
    RESOURCES "${MY_SLICER_RESOURCES}"
    DESTINATION_DIR ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}${_od_subdir}
    INSTALL_DIR ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}
    ${_od_no_install_subdir}
    )
endmacro()
