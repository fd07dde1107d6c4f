module blogsite-operator.local/pause

go 1.26
