module blogsite-operator.local/daedalus-standin

go 1.26
