

cmd-1€¬ç‚À’‘"
candidates:*