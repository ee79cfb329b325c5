

cmd-1€¬ç‚À’‘
news:n1
news:n2