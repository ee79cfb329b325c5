

cmd-1€¬ç‚À’‘
daily