package Amic::Hello;
use strict;
use warnings;
our $VERSION = '0.01';
sub greeting { return "hello from a CPAN module built at init" }
1;
