

cmd-1€¬ç‚À’‘

Daily{x}