# Stand-in for Slicer's UseSlicer.cmake: CTK's real Python build macros (CTKConfig.cmake loads
# ctkFunctionExtractOptimizedLibrary with CTK's other functions) plus the scripted-module macro.
list(INSERT CMAKE_MODULE_PATH 0 ${CTK_CMAKE_DIR})
include(${CTK_CMAKE_DIR}/ctkFunctionExtractOptimizedLibrary.cmake)
include(${CTK_CMAKE_DIR}/ctkMacroCompilePythonScript.cmake)
include(${CMAKE_CURRENT_LIST_DIR}/SlicerMacroBuildScriptedModule.cmake)
macro(slicer_add_python_unittest)  # a ctest that launches Slicer: nothing to run without Slicer
endmacro()
