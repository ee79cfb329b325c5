

cmd-1€¬ç‚À’‘
news_rawhourly