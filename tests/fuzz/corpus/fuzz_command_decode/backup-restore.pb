

cmd-1€¬ç‚À’‘"
full-abcscratch