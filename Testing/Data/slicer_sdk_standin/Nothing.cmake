# Extension description and CPack files need a Slicer build; nothing to do in the packaging test.
